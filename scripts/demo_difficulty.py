"""How hard is the built-in demo task? Train one small CNN from scratch on few and on many labelled images.

    python scripts/demo_difficulty.py --task fundus --size 64 --n-small 100 --n-large 2500 --epochs 12 \
        --out results/demo_difficulty_fundus.json [--data-dir DIR] [--threads 2]

Without ``--data-dir`` the data are generated first (``scripts/make_demo_data.py`` with the same seed) into
``--work-dir`` (default: a temporary folder). The small model trains on the first ``--n-small`` training images, the
large one on the first ``--n-large``; both get the same number of optimiser steps (``--epochs`` passes over the large
set), pick the checkpoint with the best validation macro ROC AUC, and are scored on the test split: accuracy, macro
ROC AUC (and quadratic-weighted kappa for fundus grades; per-finding AUC for cxr). Results go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.datalist import load_datalist, read_datalist_info  # noqa: E402
from bundle.data.readers import MedicalImageReader  # noqa: E402
from bundle.datasets.demo import generate_demo_data  # noqa: E402
from bundle.provenance import cpu_name  # noqa: E402


def read_image(path):
    """The bundle's own reader: what training sees."""
    return MedicalImageReader().read_file(path)[0]


def load_split(datalist: Path, split: str, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as ``(N, C, H, W) float32`` in ``[0, 1]`` and labels (``(N,)`` int or ``(N, K)`` 0/1)."""
    items = load_datalist(datalist, split)[:limit]
    images = []
    for item in items:
        img = read_image(item["image"])
        images.append(img[None] if img.ndim == 2 else img.transpose(2, 0, 1))
    return np.stack(images).astype(np.float32), np.asarray([item["label"] for item in items])


MODELS = {
    "resnet": "monai ResNet(basic blocks 1-1-1-1, planes 16-32-64-128, stem 5x5 stride 2, no max-pool, shortcut A)",
    "resnet-s1": "monai ResNet(basic blocks 1-1-1-1, planes 8-16-32-64, stem 3x3 stride 1, no max-pool, shortcut A)",
    "densenet": "monai DenseNet(init_features=16, growth_rate=8, block_config=(2, 2, 2), bn_size=2)",
}


def build_model(name: str, in_channels: int, n_out: int) -> torch.nn.Module:
    """A small CNN from MONAI, trained from scratch (see :data:`MODELS`)."""
    from monai.networks.nets import DenseNet, ResNet

    if name == "densenet":
        return DenseNet(2, in_channels, n_out, init_features=16, growth_rate=8, block_config=(2, 2, 2), bn_size=2)
    planes, stem, stride = ((8, 16, 32, 64), 3, 1) if name == "resnet-s1" else ((16, 32, 64, 128), 5, 2)
    return ResNet(
        "basic",
        layers=(1, 1, 1, 1),
        block_inplanes=planes,
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=stem,
        conv1_t_stride=stride,
        no_max_pool=True,
        shortcut_type="A",  # parameter-free shortcuts (no strided 1x1 convolutions)
        num_classes=n_out,
    )


def predict(model: torch.nn.Module, x: torch.Tensor, multilabel: bool, batch: int = 256) -> np.ndarray:
    """Class probabilities (softmax) or per-finding probabilities (sigmoid)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i : i + batch])
            out.append(torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1))
    return torch.cat(out).numpy()


def scores(y: np.ndarray, prob: np.ndarray, multilabel: bool, classes: list[str]) -> dict:
    """Accuracy and macro ROC AUC (plus kappa for grades, per-class AUC for findings)."""
    if multilabel:
        per_class = [float(roc_auc_score(y[:, k], prob[:, k])) for k in range(y.shape[1])]
        return {
            "accuracy": float(((prob > 0.5) == y).mean()),
            "macro_auc": float(np.mean(per_class)),
            "auc_per_class": dict(zip(classes, per_class)),
        }
    pred = prob.argmax(1)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_auc": float(
            roc_auc_score(y, prob[:, 1]) if prob.shape[1] == 2 else roc_auc_score(y, prob, multi_class="ovr")
        ),
        "quadratic_kappa": float(cohen_kappa_score(y, pred, weights="quadratic")),
    }


def train(
    x: np.ndarray,
    y: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    n_out: int,
    multilabel: bool,
    model_name: str,
    steps: int,
    batch: int,
    lr: float,
    seed: int,
    classes: list[str],
    eval_every: int,
) -> tuple[torch.nn.Module, dict]:
    """Train from scratch with AdamW, flips as augmentation; keep the best validation macro AUC."""
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    mean = torch.tensor(x.mean(axis=(0, 2, 3)))[None, :, None, None]
    std = torch.tensor(x.std(axis=(0, 2, 3)) + 1e-6)[None, :, None, None]
    xt, xv = (torch.from_numpy(x) - mean) / std, (torch.from_numpy(val[0]) - mean) / std
    yt = torch.from_numpy(y).float() if multilabel else torch.from_numpy(y).long()
    model = build_model(model_name, x.shape[1], n_out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss() if multilabel else torch.nn.CrossEntropyLoss()
    best, best_state, history = -1.0, None, []
    order = np.zeros(0, dtype=np.int64)
    for step in range(1, steps + 1):
        if len(order) < batch:
            order = np.concatenate([order, gen.permutation(len(xt))])
        idx, order = order[:batch], order[batch:]
        xb = xt[idx]
        if gen.random() < 0.5:
            xb = xb.flip(3)
        if not multilabel and gen.random() < 0.5:
            xb = xb.flip(2)
        model.train()
        loss = loss_fn(model(xb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            val_auc = scores(val[1], predict(model, xv, multilabel), multilabel, classes)["macro_auc"]
            history.append({"step": step, "loss": float(loss.detach()), "val_macro_auc": val_auc})
            if val_auc > best:
                best, best_state = val_auc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.normalisation = (mean, std)
    return model, {"best_val_macro_auc": best, "history": history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fundus", choices=("fundus", "cxr"))
    parser.add_argument("--data-dir", type=Path, help="existing demo data (datalist.json inside); else generated")
    parser.add_argument("--work-dir", type=Path, help="where to generate data (default: a temporary folder)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--domain", default="A", choices=("A", "B"))
    parser.add_argument("--n-small", type=int, default=100)
    parser.add_argument("--n-large", type=int, default=2500)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=600)
    parser.add_argument(
        "--epochs", type=int, default=12, help="passes over the large set; the small set gets as many steps"
    )
    parser.add_argument("--model", default="resnet", choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("demo_difficulty.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    tmp = None
    if args.data_dir is None:
        if args.work_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="demo_difficulty_")
        data_dir = Path(tmp.name if tmp else args.work_dir)
        generate_demo_data(
            args.task, data_dir, args.n_large, args.n_val, args.n_test, args.size, args.seed, args.domain, progress=True
        )
    else:
        data_dir = args.data_dir
    datalist = data_dir / "datalist.json"
    info = read_datalist_info(datalist)
    multilabel = info["task"] == "multilabel"
    classes = list(info["classes"])
    x, y = load_split(datalist, "training", args.n_large)
    val, test = load_split(datalist, "validation", args.n_val), load_split(datalist, "test", args.n_test)
    if len(x) < args.n_large:
        parser.error(f"{datalist} has only {len(x)} training images, --n-large is {args.n_large}")
    t_data = time.perf_counter() - t_start
    steps = args.epochs * int(np.ceil(args.n_large / args.batch_size))
    eval_every = max(1, steps // 16)

    results: dict = {
        "task": args.task,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_dir": str(data_dir),
        "steps": steps,
        "model": MODELS[args.model],
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        # majority-class accuracy (multi-class) or mean per-finding accuracy of always predicting the majority value
        "chance": {
            "accuracy": (
                float(np.maximum(test[1].mean(0), 1 - test[1].mean(0)).mean())
                if multilabel
                else float(np.bincount(test[1]).max() / len(test[1]))
            ),
            "macro_auc": 0.5,
        },
        "data_seconds": round(t_data, 1),
        "runs": {},
    }
    for name, n in (("small", args.n_small), ("large", args.n_large)):
        t0 = time.perf_counter()
        model, log = train(
            x[:n],
            y[:n],
            val,
            len(classes),
            multilabel,
            args.model,
            steps,
            args.batch_size,
            args.lr,
            args.seed,
            classes,
            eval_every,
        )
        mean, std = model.normalisation
        test_scores = scores(
            test[1], predict(model, (torch.from_numpy(test[0]) - mean) / std, multilabel), multilabel, classes
        )
        n_params = sum(p.numel() for p in model.parameters())
        results["runs"][name] = {"n_train": n, "params": n_params, "test": test_scores, "seconds": 0.0, **log}
        results["runs"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        line = ", ".join(f"{k} {v:.3f}" for k, v in test_scores.items() if isinstance(v, float))
        print(f"{args.task} n_train={n:5d}: test {line}  ({results['runs'][name]['seconds']:.0f} s)")
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} (total {results['total_seconds']:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

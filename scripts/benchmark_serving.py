"""Latency per request and images per second of the MONAI Label app (apps/monailabel/), in process.

    python scripts/benchmark_serving.py --out docs/results [--image-size 224] [--requests 50]

Serves the default explainer + student (random weights: the time does not depend on them) at ``--image-size`` through
FastAPI's TestClient on ``monailabel.app``, as tests/test_monailabel_app.py does (no port, no network stack), and
times one client's requests one after another: an uploaded fundus PNG and chest X-ray DICOM (``output=json``: the
scores; ``output=image``: the mask PNG) and the same DICOM from the studies folder. Writes ``serving_cpu.json`` (every
request's seconds, the machine) and ``serving_cpu.md`` (the table docs/PERFORMANCE.md, "Serving with MONAI Label",
copies). Needs the MONAI Label extras (``bash apps/install_extras.sh``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "apps" / "monailabel"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(APP_DIR))

from bundle.files import write_atomically  # noqa: E402
from bundle.provenance import command_line, git_commit, machine_info, portable_path  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(seconds: list[float]) -> dict[str, float]:
    mean = statistics.fmean(seconds)
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "p90_ms": 1000 * percentile(seconds, 0.9),
        "mean_ms": 1000 * mean,
        "images_per_s": 1.0 / mean,
    }


def make_inputs(work: Path, source_size: int, image_size: int) -> dict[str, Any]:
    """Demo fundus PNG and chest X-ray DICOM at ``source_size``, random default networks at ``image_size``."""
    import torch
    from monai.bundle import ConfigParser

    from bundle.datasets.demo import generate_demo_data

    setups = {}
    for task, overlays in (("fundus", []), ("cxr", ["configs/datasets/demo_cxr.yaml"])):
        demo = work / task
        generate_demo_data(task, demo, n_train=0, n_val=0, n_test=1, size=source_size, seed=0)
        parser = ConfigParser()
        parser.read_config([str(ROOT / "configs" / "inference.yaml"), *(str(ROOT / c) for c in overlays)])
        parser["image_size"] = image_size
        torch.manual_seed(0)
        (demo / "models").mkdir()
        torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, demo / "models" / "model.pt")
        studies = demo / "studies"
        shutil.copytree(demo / "images", studies)
        conf = {
            "model_path": str(demo / "models" / "model.pt"),
            "config_files": ",".join(overlays),
            "image_size": str(image_size),
        }
        setups[task] = {"file": next(studies.iterdir()), "studies": studies, "conf": conf}
    return setups


def time_requests(setups: dict[str, Any], requests: int, warmup: int) -> dict[str, list[float]]:
    import pydicom_compat

    pydicom_compat.apply()
    from fastapi.testclient import TestClient
    from monailabel.app import app
    from monailabel.config import settings

    cases = {
        "fundus PNG upload, json": ("fundus", "json", True),
        "fundus PNG upload, mask PNG": ("fundus", "image", True),
        "cxr DICOM upload, json": ("cxr", "json", True),
        "cxr DICOM from studies, json": ("cxr", "json", False),
    }
    times: dict[str, list[float]] = {}
    for task in ("fundus", "cxr"):
        setup = setups[task]
        settings.MONAI_LABEL_APP_DIR = str(APP_DIR)
        settings.MONAI_LABEL_STUDIES = str(setup["studies"])
        settings.MONAI_LABEL_APP_CONF = setup["conf"]
        settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False
        settings.MONAI_LABEL_SESSIONS = False
        with TestClient(app, raise_server_exceptions=True) as client:
            for name, (case_task, output, upload) in cases.items():
                if case_task != task:
                    continue
                path: Path = setup["file"]
                url = f"/infer/medtex?output={output}" + ("" if upload else f"&image={path.stem}")
                seconds = []
                for i in range(warmup + requests):
                    files = {"file": (path.name, path.read_bytes())} if upload else None
                    start = time.perf_counter()
                    response = client.post(url, files=files)
                    elapsed = time.perf_counter() - start
                    if response.status_code != 200:
                        raise RuntimeError(f"{name}: {response.status_code} {response.text}")
                    if i >= warmup:
                        seconds.append(elapsed)
                times[name] = seconds
    return times


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Serving: MONAI Label app, CPU",
        "",
        f"{m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} ({m['torch_threads']} threads), MONAI "
        f"{m['monai']}, monailabel {result['monailabel']}. Default explainer + student at {result['image_size']} px "
        f"(random weights), sources {result['source_size']} px; one client, requests one after another through "
        f"FastAPI's TestClient (no network); {result['requests']} timed requests after {result['warmup']} warm-up.",
        "",
        "| request | median ms | p90 ms | mean ms | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in result["summary"].items():
        lines.append(
            f"| {name} | {s['median_ms']:.1f} | {s['p90_ms']:.1f} | {s['mean_ms']:.1f} | {s['images_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "out" / "serving", help="(out/serving; docs/results for the docs)"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    import monailabel
    import torch

    given = list(sys.argv[1:] if argv is None else argv)
    if "--out" in given:  # committed results name no folder of the machine that made them
        given[given.index("--out") + 1] = portable_path(args.out)

    with tempfile.TemporaryDirectory() as tmp:
        setups = make_inputs(Path(tmp), args.source_size, args.image_size)
        times = time_requests(setups, args.requests, args.warmup)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(["python", "scripts/benchmark_serving.py", *given]),
        "git_commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "monailabel": monailabel.__version__,
        "image_size": args.image_size,
        "source_size": args.source_size,
        "requests": args.requests,
        "warmup": args.warmup,
        "summary": {name: summary(seconds) for name, seconds in times.items()},
        "seconds": times,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out / "serving_cpu.json", lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    write_atomically(args.out / "serving_cpu.md", lambda p: p.write_text(markdown(result)))
    print(markdown(result))


if __name__ == "__main__":
    main()

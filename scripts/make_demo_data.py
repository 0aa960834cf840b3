"""Write the built-in synthetic demo data set: images, lesion/finding masks and a MONAI datalist.

    python scripts/make_demo_data.py --task fundus --out data/demo_fundus --n-train 500 --n-val 100 --n-test 200 \
        --size 64 --seed 0 [--domain A|B] [--n-unlabeled 0]

Fundus images are 8-bit RGB PNGs (5 DR-like grades), chest X-rays are DICOM files (4 independent findings);
see bundle/datasets/demo/ and docs/DEMO_DATA.md. The same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.datasets.demo import DOMAINS, SPLIT_PREFIX, TASKS, generate_demo_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="fundus (multi-class grading) or cxr (multi-label)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--n-train", required=True, type=int, help="labelled training images")
    parser.add_argument("--n-val", required=True, type=int, help="validation images")
    parser.add_argument("--n-test", required=True, type=int, help="test images")
    parser.add_argument("--size", required=True, type=int, help="image side in pixels (>= 32)")
    parser.add_argument("--seed", required=True, type=int, help="random seed")
    parser.add_argument("--domain", default="A", choices=DOMAINS, help="acquisition domain (camera/scanner), default A")
    parser.add_argument("--n-unlabeled", default=0, type=int, help="extra images without labels (default 0)")
    args = parser.parse_args(argv)
    for name in ("n_train", "n_val", "n_test", "n_unlabeled"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.size < 32:
        parser.error("--size must be at least 32")

    start = time.perf_counter()
    datalist = generate_demo_data(
        args.task,
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        domain=args.domain,
        n_unlabeled=args.n_unlabeled,
        progress=True,
    )
    seconds = time.perf_counter() - start
    out = args.out.resolve()
    ext = "png" if args.task == "fundus" else "dcm"
    print(f"demo_{args.task} (domain {args.domain}, {args.size} px, seed {args.seed}) in {seconds:.1f} s:")
    for split, prefix in SPLIT_PREFIX.items():
        n = len(datalist[split])
        if n:
            print(
                f"  {split:<10} {n:6d} images  {out / 'images'}/{prefix}_*.{ext}  masks {out / 'masks'}/{prefix}_*.png"
            )
    print(f"  datalist   {out / 'datalist.json'}  ({datalist['task']}, classes: {', '.join(datalist['classes'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

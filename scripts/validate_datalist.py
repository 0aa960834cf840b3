"""Pre-flight check of a MONAI datalist: every missing, empty, unreadable or mislabelled file, leaks between splits
(same path, patient or content) and missing classes, in one listing (see bundle/data/preflight.py).

    python scripts/validate_datalist.py DATALIST [--task multiclass --num-classes 5] [--policy error|skip]
        [--no-decode] [--frame N] [--workers N] [--json REPORT.json]

Exit status: 0 when nothing fails under the policy (warnings allowed), 1 otherwise. Under ``--policy skip`` items
with bad files or labels are listed as skipped (exit 0); overlaps, duplicates and missing classes still exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.datalist import TASKS  # noqa: E402
from bundle.data.preflight import POLICIES, preflight  # noqa: E402
from bundle.data.readers import DEFAULT_MAX_PIXELS, MedicalImageReader  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the check, print the report (and write it as JSON); return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datalist", type=Path, help="the datalist JSON file")
    parser.add_argument("--task", choices=TASKS, help="the config's task; a datalist that disagrees is an error")
    parser.add_argument("--num-classes", type=int, help="the config's num_classes; checked against 'classes'")
    parser.add_argument("--policy", choices=POLICIES, default="error", help="error (default) or skip bad items")
    parser.add_argument("--no-decode", action="store_true", help="only existence, size and content hash (faster)")
    parser.add_argument("--frame", type=int, help="frame/slice to read from multi-frame DICOM or NIfTI volumes")
    parser.add_argument("--workers", type=int, help="file-reading threads (default: CPU count, at most 8)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"images with more pixels are unreadable, as the config's max_image_pixels (default {DEFAULT_MAX_PIXELS})",
    )
    parser.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder besides the datalist's own that its paths may point into (repeatable; the config's data_roots)",
    )
    parser.add_argument("--json", type=Path, help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    report = preflight(
        args.datalist,
        task=args.task,
        num_classes=args.num_classes,
        policy=args.policy,
        decode=not args.no_decode,
        workers=args.workers,
        reader=MedicalImageReader(frame=args.frame, max_pixels=args.max_pixels),
        allowed_roots=args.allow_root,
    )
    print(report.format())
    if args.json is not None:
        print(f"report written to {report.write_json(args.json)}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

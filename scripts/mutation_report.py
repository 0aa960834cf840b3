"""docs/results/mutation.{json,md} from mutmut's results in mutants/ and the reviewed survivors of
docs/mutation_review.yaml: the kill rate per file, and every surviving mutant with its diff and verdict.

Run by scripts/mutation_run.sh after ``mutmut run``; alone it rereads the results of the last run:
    python scripts/mutation_report.py --seconds 2400 --children 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.provenance import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REVIEW = ROOT / "docs" / "mutation_review.yaml"
OUT = ROOT / "out" / "mutation"  # docs/results/mutation only when asked (scripts/mutation_run.sh asks)
# verdicts a reviewed survivor may have; none of them changes a number a user reads
VERDICTS = {
    "equivalent": "behaves the same for every input (equivalent mutant)",
    "message": "changes only the text of an error or log message, not when it is raised or what is computed",
    "unreachable": "changes a branch that the code's callers cannot reach",
    "not a number": "changes output that holds no reported number (file layout, picture, progress)",
    "loud": "makes the code fail with an error on a path no test of the run takes (no wrong number is written)",
    "open": "changes a number, a decision or a file a user reads and no test of the run catches it: work left to do",
}


def mutmut(*args: str) -> str:
    return subprocess.run(["mutmut", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def results() -> dict[str, str]:
    """Every mutant's name and status (killed, survived, no tests, timeout, ...)."""
    statuses = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            statuses[name] = status
    return statuses


def source_file(name: str) -> str:
    """bundle.engines.metrics.xǁClassǁmethod__mutmut_3 -> bundle/engines/metrics.py"""
    module = re.sub(r"\.x[_ǁ].*$", "", name)
    return module.replace(".", "/") + ".py"


def function_of(name: str) -> str:
    """bundle.engines.metrics.xǁClassǁmethod__mutmut_3 -> bundle.engines.metrics.xǁClassǁmethod"""
    return re.sub(r"__mutmut_\d+$", "", name)


def review_key(function: str, change: str) -> tuple[str, str]:
    """A review holds across runs as long as the function and the mutated lines stay the same (mutant numbers
    change whenever anything above them in the file changes)."""
    return function, " ".join(change.split())


def load_review(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    entries = (yaml.safe_load(path.read_text()) if path.is_file() else None) or []
    review = {}
    for entry in entries:
        if entry.get("verdict") not in VERDICTS:
            raise SystemExit(f"{path}: {entry}: unknown verdict, expected one of {sorted(VERDICTS)}")
        review[review_key(entry["function"], entry["change"])] = entry
    return review


def diff(name: str) -> str:
    """The mutated lines only: ``-old`` then ``+new``."""
    lines = mutmut("show", name).splitlines()
    return "\n".join(line for line in lines if line[:1] in "-+" and not line.startswith(("---", "+++")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="wall time of the mutmut run")
    parser.add_argument("--children", type=int, default=None, help="mutmut run --max-children")
    parser.add_argument("--todo", type=Path, default=None, help="write the survivors not yet reviewed here (YAML)")
    parser.add_argument("--out", type=Path, default=OUT, help="writes OUT.json and OUT.md (default out/mutation)")
    args = parser.parse_args(argv)
    statuses = results()
    if not statuses:
        raise SystemExit("no mutmut results in mutants/: run `bash scripts/mutation_run.sh`")
    review = load_review(REVIEW)
    per_file: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        per_file[source_file(name)][status] += 1
    survivors = []
    for name, status in sorted(statuses.items()):
        if status != "survived":
            continue
        change = diff(name)
        entry = review.get(review_key(function_of(name), change), {})
        verdict = entry.get("verdict")
        survivors.append({"mutant": name, "diff": change, "verdict": verdict, "why": entry.get("why", "")})
    totals = Counter(statuses.values())
    tested = totals["killed"] + totals["survived"] + totals["timeout"]
    report: dict[str, Any] = {
        "command": "bash scripts/mutation_run.sh",
        "mutmut": version("mutmut"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {args.children} mutmut children",
        "wall_seconds": args.seconds,
        "totals": dict(totals),
        "kill_rate_of_tested": (totals["killed"] + totals["timeout"]) / tested if tested else None,
        "per_file": {f: dict(c) for f, c in sorted(per_file.items())},
        "unreviewed_survivors": sum(s["verdict"] is None for s in survivors),
        "open_survivors": sum(s["verdict"] == "open" for s in survivors),
        "survivors": survivors,
    }
    if args.todo:
        todo = [
            {"function": function_of(s["mutant"]), "change": s["diff"], "verdict": None, "why": ""}
            for s in survivors
            if s["verdict"] is None
        ]
        args.todo.write_text(yaml.safe_dump(todo, allow_unicode=True, sort_keys=False, width=200))
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    killed = totals["killed"] + totals["timeout"]
    print(f"{tested} mutants reached by tests, {killed} killed; {len(survivors)} survived")
    print(f"({report['unreviewed_survivors']} not yet reviewed, {report['open_survivors']} open);", end=" ")
    print(f"{totals['no tests']} reached by no test of the run")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    minutes = f"{report['wall_seconds'] / 60:.0f} min" if report["wall_seconds"] else "not timed"
    lines = [
        "# Mutation run",
        "",
        f"Generated by `{report['command']}` (mutmut {report['mutmut']}, {report['machine']}, {minutes}).",
        'Read in docs/RELIABILITY.md, "Mutation testing". *no tests*: no test of the run reaches the mutated',
        "function in its own process; *not run*: the run was stopped before it came to these (`mutmut run` goes on).",
        "",
        "| file | killed | survived | timeout | no tests | not run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for file, counts in report["per_file"].items():
        row = [counts.get(k, 0) for k in ("killed", "survived", "timeout", "no tests", "not checked")]
        lines.append(f"| {file} | " + " | ".join(str(v) for v in row) + " |")
    totals = report["totals"]
    row = [totals.get(k, 0) for k in ("killed", "survived", "timeout", "no tests", "not checked")]
    lines.append("| **all** | " + " | ".join(f"**{v}**" for v in row) + " |")
    rate = report["kill_rate_of_tested"]
    lines += ["", f"Killed of the mutants the tests reach: {rate:.1%}." if rate is not None else "", ""]
    lines += ["## Survivors", "", "Verdicts (docs/mutation_review.yaml):", ""]
    lines += [f"- *{verdict}*: {meaning}" for verdict, meaning in VERDICTS.items()]
    lines += ["", "| mutant | change | verdict | why |", "|---|---|---|---|"]
    for s in report["survivors"]:
        change = "<br>".join(f"`{line.strip()}`" for line in s["diff"].splitlines()).replace("|", "\\|")
        lines.append(f"| {s['mutant']} | {change} | {s['verdict'] or '**not reviewed**'} | {s['why']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

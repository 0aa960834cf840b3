r"""Copy each generated table into the doc sections that read it, so that no figure is retyped by hand.

    python scripts/refresh_doc_tables.py            # rewrite docs/RESULTS.md and docs/PERFORMANCE.md in place
    python scripts/refresh_doc_tables.py --check    # change nothing; exit 1 and name each stale table

A table in a doc is marked ``<!-- from results/X.md -->`` on the line above it (tests/test_docs.py checks that it is
X.md's table). The table put there is, of X.md's tables with the same header row (where the columns changed, a new
size or method column: the same first header cell), the one that shares the most row names with the doc's table,
the first of them on a tie (a generated file puts its headline metric first: ROC AUC before accuracy and kappa). A
marker with no such table is an error that names the doc line.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/RESULTS.md", "docs/PERFORMANCE.md")
MARKER = re.compile(r"<!-- from (results/\S+) -->")


def tables(lines: Sequence[str]) -> list[list[str]]:
    """The markdown tables in ``lines``: runs of consecutive lines that start with ``|``."""
    found: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def first_cell(header: str) -> str:
    return header.strip("|").split("|")[0].strip()


def pick_table(source: list[list[str]], old: list[str], where: str) -> list[str]:
    """The table of ``source`` that the doc's table ``old`` copies (see the module's docstring)."""
    header = old[0]
    same = [t for t in source if t[0] == header] or [t for t in source if first_cell(t[0]) == first_cell(header)]
    if not same:
        raise ValueError(f"{where}: the generated file has no table headed like {header!r}")
    names = {first_cell(row) for row in old[2:]}
    return max(same, key=lambda table: len(names & {first_cell(row) for row in table[2:]}))


def refresh(doc: Path) -> tuple[str, list[str]]:
    """``doc``'s text with every marked table replaced by its generated table, and the doc lines that changed."""
    lines = doc.read_text().splitlines()
    out: list[str] = []
    changed: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        match = MARKER.fullmatch(lines[i].strip())
        i += 1
        if not match:
            continue
        where = f"{doc.name}:{i}"
        generated = doc.parent / match.group(1)
        if not generated.is_file():
            raise FileNotFoundError(f"{where}: {match.group(1)} does not exist")
        old = []
        while i < len(lines) and lines[i].startswith("|"):
            old.append(lines[i])
            i += 1
        if not old:
            raise ValueError(f"{where}: no table below the marker")
        new = pick_table(tables(generated.read_text().splitlines()), old, where)
        if new != old:
            changed.append(f"{where} from {match.group(1)}")
        out.extend(new)
    return "\n".join(out) + "\n", changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    parser.add_argument("docs", nargs="*", type=Path, default=[ROOT / d for d in DOCS], help="docs to refresh")
    args = parser.parse_args(argv)
    stale = []
    for doc in args.docs:
        text, changed = refresh(doc)
        stale += changed
        if changed and not args.check:
            doc.write_text(text)
    for line in stale:
        print(f"{'stale' if args.check else 'refreshed'}: {line}")
    if not stale:
        print("every marked table is its generated table")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())

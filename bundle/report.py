"""One self-contained HTML page gathering a results folder: markdown and CSV tables, PNG figures, provenance.

    from bundle.report import write_html_report
    write_html_report("out/learning_curve", "out/learning_curve/report.html", "Learning curves")

Files are taken from the top level of the folder and grouped by stem: ``<stem>.md``, ``<stem>.png`` and
``<stem>.csv`` form one section, headed by the provenance in ``<stem>.json`` (an object: when, where, with which
command, ...) or ``<stem>.txt`` when present. JSON/TXT files without such artefacts describe the folder as a whole
and head the page. Images are embedded as base64 data URIs, so the page can be mailed or archived on its own.
Only the simple markdown scripts write (headings, tables, lists, paragraphs, code) is rendered; no dependency.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

ARTEFACTS = (".md", ".png", ".csv")  # in this order within a section: tables, then figures, then raw data
METADATA = (".json", ".txt")
MAX_CSV_ROWS = 500  # longer files are cut (the file itself stays the record)
MAX_TEXT = 20000
# provenance keys shown first, in this order, when a JSON metadata file has them
FIRST_KEYS = ("created", "updated", "finished", "host", "cwd", "command", "git_commit")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta td, table.meta th { border: none; padding: .1em .8em .1em 0; vertical-align: top; text-align: left;
                               background: none; }
table.meta th { color: #555; font-weight: normal; }
.meta-box { background: #f6f8fa; border-left: 4px solid #8aa; padding: .4em .8em; margin: .6em 0; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.88em; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .note { color: #666; font-size: 0.85em; }
"""


def write_html_report(results_dir: str | os.PathLike, html_path: str | os.PathLike, title: str) -> Path:
    """Write one HTML file gathering every ``*.md``, ``*.png`` and ``*.csv`` of ``results_dir``; return its path."""
    root = Path(results_dir)
    out = Path(html_path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    artefacts: dict[str, list[Path]] = {}
    metadata: dict[str, list[Path]] = {}
    for path in files:
        suffix = path.suffix.lower()
        if suffix in ARTEFACTS:
            artefacts.setdefault(path.stem, []).append(path)
        elif suffix in METADATA:
            metadata.setdefault(path.stem, []).append(path)

    body = [f"<h1>{html.escape(title)}</h1>"]
    generated = datetime.now().astimezone().isoformat(timespec="seconds")
    # the folder's name, not its absolute path: a committed report must not name the folders of the machine that made it
    body.append(f'<p class="note">Generated {generated} from <code>{html.escape(root.resolve().name)}/</code>.</p>')
    general = [p for stem, paths in sorted(metadata.items()) if stem not in artefacts for p in paths]
    for path in general:
        body.append(f"<h2>{html.escape(path.name)}</h2>")
        body.append(_render_metadata(path))
    for stem in sorted(artefacts):
        body.append(f'<h2 id="{html.escape(stem)}">{html.escape(stem)}</h2>')
        for path in metadata.get(stem, []):
            body.append(_render_metadata(path))
        for path in sorted(artefacts[stem], key=lambda p: (ARTEFACTS.index(p.suffix.lower()), p.name)):
            body.append(_render_artefact(path))
    if not artefacts and not general:
        body.append('<p class="note">No *.md, *.csv or *.png results found.</p>')

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _render_artefact(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".png":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        name = html.escape(path.name)
        return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'
    if suffix == ".csv":
        return _render_csv(path)
    return f'<div class="markdown">{markdown_to_html(path.read_text(encoding="utf-8", errors="replace"))}</div>'


def _render_csv(path: Path) -> str:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows:
        return f'<p class="note">{html.escape(path.name)}: empty</p>'
    header, data = rows[0], rows[1:]
    shown = data[:MAX_CSV_ROWS]
    parts = [f'<p class="note">{html.escape(path.name)} ({len(data)} rows)</p>', "<table>"]
    parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in shown:
        parts.append("<tr>" + "".join(_cell(v) for v in row) + "</tr>")
    parts.append("</table>")
    if len(data) > len(shown):
        parts.append(f'<p class="note">first {len(shown)} of {len(data)} rows shown; the CSV file has them all.</p>')
    return "\n".join(parts)


def _cell(value: str) -> str:
    try:
        float(value)
    except ValueError:
        return f"<td>{html.escape(value)}</td>"
    return f'<td class="num">{html.escape(value)}</td>'


def _render_metadata(path: Path) -> str:
    """A JSON object as a key/value table (provenance keys first); anything else as preformatted text."""
    text = path.read_text(encoding="utf-8", errors="replace")
    content: Any = None
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError:
            content = None
    if isinstance(content, dict):
        keys = [k for k in FIRST_KEYS if k in content] + [k for k in content if k not in FIRST_KEYS]
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value(content[k])}</td></tr>" for k in keys)
        table = f'<table class="meta">{rows}</table>'
    else:
        table = f"<pre>{html.escape(text[:MAX_TEXT])}</pre>"
    return f'<div class="meta-box"><p class="note">{html.escape(path.name)}</p>{table}</div>'


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}={html.escape(_short(v))}" for k, v in value.items())
    if isinstance(value, str) and ("/" in value or " " in value):
        return f"<code>{html.escape(value)}</code>"
    return html.escape(_short(value))


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------------- markdown

_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")


def markdown_to_html(text: str) -> str:
    """Render simple markdown: ``#`` headings, pipe tables, ``-``/``*`` lists, fenced code and paragraphs."""
    lines = text.splitlines()
    parts: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            parts.append("<p>" + _inline(" ".join(s.strip() for s in paragraph)) + "</p>")
            paragraph.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            parts.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            flush()
            # markdown's top levels sit below the page's and section's own headings
            level = min(len(heading.group(1)) + 2, 6)
            parts.append(f"<h{level}>{_inline(heading.group(2).rstrip('#').strip())}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and _TABLE_SEPARATOR.match(lines[i + 1]):
            flush()
            j = i + 2
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            parts.append(_table(lines[i], lines[i + 1], lines[i + 2 : j]))
            i = j
            continue
        elif re.match(r"^[-*]\s+", stripped):
            flush()
            items = []
            while i < len(lines) and re.match(r"^[-*]\s+", lines[i].strip()):
                items.append("<li>" + _inline(re.sub(r"^[-*]\s+", "", lines[i].strip())) + "</li>")
                i += 1
            parts.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif not stripped:
            flush()
        else:
            paragraph.append(line)
        i += 1
    flush()
    return "\n".join(parts)


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _table(header: str, separator: str, rows: list[str]) -> str:
    aligns = []
    for spec in _split_row(separator):
        left, right = spec.startswith(":"), spec.endswith(":")
        aligns.append("center" if left and right else "right" if right else "left" if left else "")

    def cell(tag: str, text: str, k: int) -> str:
        align = f' style="text-align:{aligns[k]}"' if k < len(aligns) and aligns[k] else ""
        return f"<{tag}{align}>{_inline(text)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", c, k) for k, c in enumerate(_split_row(header))) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(cell("td", c, k) for k, c in enumerate(_split_row(row))) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then ``code``, **bold** and *italic* (code spans first, so their content stays literal)."""
    pieces = re.split(r"(`[^`]+`)", text)
    out = []
    for piece in pieces:
        if len(piece) > 1 and piece.startswith("`") and piece.endswith("`"):
            out.append(f"<code>{html.escape(piece[1:-1])}</code>")
            continue
        piece = html.escape(piece)
        piece = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", piece)
        piece = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", piece)
        out.append(piece)
    return "".join(out)


def main(argv: list[str] | None = None) -> Path:
    """``python -m bundle.report RESULTS_DIR [--out HTML] [--title TITLE]``: one page for a whole results folder,
    e.g. docs/results, where learning_curve.py, compare_saliency.py and benchmark.py of several tasks meet."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "results_dir", type=Path, help="folder whose *.md, *.png, *.csv (and *.json provenance) to gather"
    )
    parser.add_argument("--out", type=Path, help="HTML file to write (default RESULTS_DIR/report.html)")
    parser.add_argument("--title", default="MED-TEX results", help="page title")
    args = parser.parse_args(argv)
    if not args.results_dir.is_dir():
        parser.error(f"{args.results_dir} is not a folder")
    path = write_html_report(args.results_dir, args.out or args.results_dir / "report.html", args.title)
    print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB, images embedded)")
    return path


if __name__ == "__main__":
    main()

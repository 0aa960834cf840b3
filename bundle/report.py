"""One self-contained HTML page for a results folder: figures first, headline numbers, raw tables and provenance folded.

    from bundle.report import write_html_report
    write_html_report("out/learning_curve", "out/learning_curve/report.html", "Learning curves")

Files are taken from the top level of the folder and grouped by stem (``<stem>.md``, ``.png``, ``.csv``, and the
provenance ``<stem>.json`` or ``.txt``). The page reads top to bottom as someone who would rather look than read wants:

1. the figures, by kind: learning curves (``learning_curve*`` stems, or any stem whose CSV has ``method`` and ``seed``
   columns), saliency grids (``saliency*``), then any other PNG; each kind followed by its headline table;
2. headline tables derived from the CSVs: for a seeded CSV, its first float column after ``seed`` (the AUC of
   learning_curve.py) per method at the method's largest ``n_labeled``, as mean ± sd over seeds (n seeds); for a CSV
   with one row per method, every float column;
3. raw tables (the markdown and the CSV of each stem) and provenance (the JSON/TXT files), each folded in a
   ``<details>`` element; tables sit in boxes that scroll on their own, so nothing is wider than the window.

Rounding, so that no digit is shown that the seeds cannot resolve: a mean over n >= 2 seeds is given to the decimal
place of the first significant digit of its standard error (sd / sqrt(n), sd with n - 1), at most 3 decimals, and its
sd to the same place (0.49, 0.51, 0.53: se 0.012 -> "0.51 ± 0.02 (3)"; 0.512, 0.524, 0.498: se 0.0075 ->
"0.511 ± 0.013 (3)"). A number without a spread (one seed, one run, a provenance figure) keeps 3 significant digits
and every digit before the point (0.7977 -> 0.798, 194.44 -> 194). In the raw tables, numbers written with 5 or more
significant digits (the CSVs' full floats) are cut so, their exact value kept in the cell's tooltip and in the file;
shorter ones (the markdown the scripts already rounded) and integers are shown as written.

Paths: the page names the folder relative to its repository (or by its name outside one), and absolute paths in any
text (a ``cwd`` in provenance, say) are written relative to the results folder or the repository, or as ``…/<name>``
when they lie outside both (system paths such as ``/proc/self/clear_refs`` stay): a page that is shared or committed
names no folder of the machine that made it. The page is deterministic (same files, same bytes: no clock is read)
and self-contained (PNGs as data URIs). Only the simple markdown the scripts write (headings, tables, lists,
paragraphs, code) is rendered; no dependency.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

ARTEFACTS = (".md", ".png", ".csv")  # in this order within a raw section: tables, then figures, then raw data
METADATA = (".json", ".txt")
MAX_CSV_ROWS = 500  # longer files are cut (the file itself stays the record)
MAX_TEXT = 20000
MAX_DECIMALS = 3  # no mean over seeds is resolved finer than this
SIGNIFICANT = 3  # digits kept of a number without a spread
# provenance keys shown first, in this order, when a JSON metadata file has them
FIRST_KEYS = ("created", "updated", "finished", "host", "cwd", "command", "git_commit")
DATE_KEYS = ("created", "updated", "finished")
KINDS = (("learning-curves", "Learning curves"), ("saliency", "Saliency maps"), ("other-figures", "Other figures"))
WIDE_FIGURE = 1.8  # width / height above which a figure takes a whole row

_STYLE = """
html { -webkit-text-size-adjust: 100%; }
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 1.6em; }
h1, h2, h3, h4, h5, h6, p, li, summary, figcaption { overflow-wrap: anywhere; }
nav a { margin-right: 1em; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap: 1em; }
figure { margin: 0; min-width: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption, .note { color: #666; font-size: 0.85em; }
.table-box { max-width: 100%; overflow: auto; margin: .6em 0; }
.table-box.raw { max-height: 28em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; overflow-wrap: normal; }
table.meta td, table.meta th { border: none; padding: .1em .8em .1em 0; vertical-align: top; text-align: left;
                               background: none; position: static; }
table.meta th { color: #555; font-weight: normal; white-space: nowrap; }
table.meta td { overflow-wrap: anywhere; }  /* hashes and long commands wrap; other tables scroll in their box */
.markdown td { overflow-wrap: anywhere; }  /* long identifiers in prose cells wrap, code keeps its words */
.markdown td code { overflow-wrap: normal; }
details { margin: .4em 0; border: 1px solid #ddd; border-radius: 4px; padding: .3em .8em; }
details[open] { padding-bottom: .8em; }
summary { cursor: pointer; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.88em; overflow-wrap: anywhere; }
pre { background: #f6f8fa; padding: .6em; max-width: 100%; overflow-x: auto; white-space: pre-wrap; }
"""


def write_html_report(results_dir: str | os.PathLike, html_path: str | os.PathLike, title: str) -> Path:
    """Write one HTML page for ``results_dir`` (figures, headline tables, then folded raw tables and provenance);
    return its path. Same files in, same bytes out."""
    root = Path(results_dir)
    out = Path(html_path)
    files = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    paths = _Paths(root)
    artefacts: dict[str, dict[str, Path]] = {}
    metadata: dict[str, list[Path]] = {}
    for path in files:
        suffix = path.suffix.lower()
        if suffix in ARTEFACTS:
            artefacts.setdefault(path.stem, {})[suffix] = path
        elif suffix in METADATA:
            metadata.setdefault(path.stem, []).append(path)

    kinds: dict[str, list[str]] = {key: [] for key, _ in KINDS}
    for stem in sorted(artefacts):
        kinds[_kind(stem, artefacts[stem])].append(stem)

    body = [f"<h1>{html.escape(title)}</h1>", _summary_line(paths, metadata, artefacts)]
    sections: list[tuple[str, str, str]] = []  # (id, heading, html)
    for key, heading in KINDS:
        figures = [_figure(stem, artefacts[stem], paths) for stem in kinds[key] if ".png" in artefacts[stem]]
        headline = _headline(key, kinds[key], artefacts, paths)
        if figures or headline:
            parts = [f'<div class="figures">{"".join(figures)}</div>'] if figures else []
            sections.append((key, heading, "\n".join(parts + headline)))
    raw = [_raw_section(stem, artefacts[stem], paths) for stem in sorted(artefacts) if set(artefacts[stem]) - {".png"}]
    if raw:
        sections.append(("raw-tables", "Raw tables", "\n".join(raw)))
    provenance = [_provenance(path, artefacts, paths) for stem in sorted(metadata) for path in metadata[stem]]
    if provenance:
        sections.append(("provenance", "Provenance", "\n".join(provenance)))

    if sections:
        body.append("<nav>" + "".join(f'<a href="#{key}">{heading}</a>' for key, heading, _ in sections) + "</nav>")
    else:
        body.append('<p class="note">No *.md, *.csv or *.png results found.</p>')
    for key, heading, content in sections:
        body.append(f'<section id="{key}">\n<h2>{heading}</h2>\n{content}\n</section>')

    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Paths:
    """Writes absolute paths relative to the results folder or its repository, never as this machine's folders."""

    root: Path

    @property
    def results(self) -> Path:
        return self.root.resolve()

    @property
    def repository(self) -> Path | None:
        for folder in (self.results, *self.results.parents):
            if (folder / ".git").exists():
                return folder
        return None

    def folder_name(self) -> str:
        """The results folder as a reader of the repository knows it (``docs/results/``), or its name."""
        repo = self.repository
        if repo is not None and repo != self.results:
            return self.results.relative_to(repo).as_posix() + "/"
        return self.results.name + "/"

    def scrub(self, text: str) -> str:
        """``text`` with every absolute POSIX path (two components or more) made relative or shortened."""
        return _ABSOLUTE_PATH.sub(lambda m: self._relative(m.group(0)), text)

    def _relative(self, path: str) -> str:
        absolute = Path(path)
        if absolute.parts[1] in SYSTEM_FOLDERS:  # /proc/self/clear_refs names the system, not this machine's folders
            return path
        for base in (self.results, self.repository):
            if base is not None and (absolute == base or base in absolute.parents):
                return absolute.relative_to(base).as_posix()
        return "…/" + absolute.name


SYSTEM_FOLDERS = frozenset({"proc", "sys", "dev", "etc", "usr", "bin", "sbin", "lib", "lib64"})
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~\\-])/[A-Za-z_.][^\s/\"'<>|,;()\[\]`=]*(?:/[^\s/\"'<>|,;()\[\]`=]+)+/?")


# ------------------------------------------------------------------------------------------------------- numbers


def format_mean_sd(values: Iterable[float]) -> str:
    """``mean ± sd (n)`` to the decimal of the standard error's first significant digit (see the module docstring)."""
    values = [float(v) for v in values]
    if not values:
        return ""
    if len(values) == 1:
        return f"{format_number(values[0])} (1)"
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    se = sd / math.sqrt(len(values))
    decimals = MAX_DECIMALS if se == 0 else min(MAX_DECIMALS, max(0, -math.floor(math.log10(se))))
    return f"{_fixed(mean, decimals)} ± {_fixed(sd, decimals)} ({len(values)})"


def format_number(value: float) -> str:
    """A number without a spread: 3 significant digits, every digit before the point kept (0.79776 -> "0.798",
    0.0062395 -> "0.00624", 194.44 -> "194", 81295.2 -> "81295"); below 1e-4 in scientific notation."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if abs(float(f"{value:.{SIGNIFICANT - 1}e}")) >= 10 ** (magnitude + 1):  # 0.99999 rounds up to 1.00, not 1.000
        magnitude += 1
    if magnitude < -4:
        return f"{value:.{SIGNIFICANT - 1}e}"
    return _fixed(value, max(0, SIGNIFICANT - 1 - magnitude))


def _fixed(value: float, decimals: int) -> str:
    text = f"{value:.{decimals}f}"
    return text[1:] if re.fullmatch(r"-0(\.0*)?", text) else text  # no "-0.00"


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text.strip()) is not None


def _as_float(text: str) -> float | None:
    """The number a cell holds, or None for text (and for nan/inf, which are shown as written)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _significant_digits(text: str) -> int:
    mantissa = re.sub(r"[eE].*$", "", text.strip()).lstrip("+-").replace(".", "").lstrip("0")
    return len(mantissa)


def _number_cell(text: str) -> str:
    """A table cell: numbers right-aligned; those written with 5+ significant digits rounded, the exact one kept
    in the tooltip."""
    value = _as_float(text)
    if value is None:
        return f"<td>{html.escape(text)}</td>"
    if _is_int(text) or _significant_digits(text) < 5:
        return f'<td class="num">{html.escape(text)}</td>'
    return f'<td class="num" title="{html.escape(text)}">{format_number(value)}</td>'


def _compact(value: Any) -> str:
    """JSON content as one line, its floats as ``format_number`` shows them (for provenance tables)."""
    if isinstance(value, float):  # a setting (1.0, 0.5) is exact: no trailing zeros that suggest a precision
        text = format_number(value)
        return re.sub(r"\.?0+$", "", text) if "." in text else text
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_compact(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


# ------------------------------------------------------------------------------------------------------- sections


def _kind(stem: str, files: dict[str, Path]) -> str:
    if stem.startswith("saliency"):
        return "saliency"
    if stem.startswith("learning_curve") or (".csv" in files and _is_seeded(_read_csv(files[".csv"]))):
        return "learning-curves"
    return "other-figures"


def _summary_line(paths: _Paths, metadata: dict[str, list[Path]], artefacts: dict[str, dict]) -> str:
    """Where the results come from (relative), how many, of when (the provenance's dates, not the clock)."""
    figures = sum(".png" in found for found in artefacts.values())
    dates = []
    for stem_files in metadata.values():
        for path in stem_files:
            content = _load_json(path)
            if isinstance(content, dict):
                dates += [str(content[k])[:10] for k in DATE_KEYS if isinstance(content.get(k), str)]
    # counted from what the page shows, so that a report written into the folder does not change the next one
    used = sum(len(found) for found in artefacts.values()) + sum(len(found) for found in metadata.values())
    parts = [f"From <code>{html.escape(paths.folder_name())}</code>", f"{used} result files, {figures} figures"]
    if dates:
        parts.append(f"runs recorded {html.escape(min(dates))} to {html.escape(max(dates))}")
    parts.append("raw tables and provenance folded at the end")
    return f'<p class="note">{html.escape(" · ").join(parts)}.</p>'


def _figure(stem: str, files: dict[str, Path], paths: _Paths) -> str:
    """The stem's PNG as a data URI, captioned with its markdown's title and a link to its raw tables."""
    path = files[".png"]
    data = path.read_bytes()
    size = _png_size(data)
    attributes, wide = "", False
    if size:
        attributes = f' width="{size[0]}" height="{size[1]}"'
        wide = size[0] > WIDE_FIGURE * size[1]
    title = paths.scrub(_markdown_title(files[".md"]) or "") if ".md" in files else ""
    caption = html.escape(title) + " · " if title else ""
    if set(files) - {".png"}:  # the raw section below carries the stem's anchor
        anchor, name = "", f'<a href="#{html.escape(stem)}">{html.escape(path.name)}</a>'
    else:
        anchor, name = f' id="{html.escape(stem)}"', html.escape(path.name)
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure{anchor}{" class=wide" if wide else ""}><img src="data:image/png;base64,{encoded}"{attributes} '
        f'alt="{html.escape(title or path.name)}"><figcaption>{caption}{name}</figcaption></figure>'
    )


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _markdown_title(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^#\s+(.*)$", line.strip())
        if match:
            return match.group(1).strip()
    return None


def _headline(kind: str, stems: list[str], artefacts: dict[str, dict[str, Path]], paths: _Paths) -> list[str]:
    tables = [(stem, _read_csv(artefacts[stem][".csv"])) for stem in stems if ".csv" in artefacts[stem]]
    if kind == "learning-curves":
        return _seeded_headline([(stem, rows) for stem, rows in tables if _is_seeded(rows)])
    if kind == "saliency":
        return [_per_method_headline(stem, rows, paths) for stem, rows in tables if _is_per_method(rows)]
    return []


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        return list(csv.DictReader(f))


def _is_seeded(rows: list[dict[str, str]]) -> bool:
    return bool(rows) and {"method", "seed"} <= set(rows[0])


def _is_per_method(rows: list[dict[str, str]]) -> bool:
    return bool(rows) and "method" in rows[0] and "seed" not in rows[0]


def _float_columns(rows: list[dict[str, str]], columns: Iterable[str]) -> list[str]:
    """Columns whose filled cells are all numbers and not all integers (metrics, not counts)."""
    found = []
    for column in columns:
        cells = [row[column] for row in rows if row.get(column, "").strip()]
        if cells and all(_as_float(c) is not None for c in cells) and not all(_is_int(c) for c in cells):
            found.append(column)
    return found


def _seeded_headline(tables: list[tuple[str, list[dict[str, str]]]]) -> list[str]:
    """One table per metric: methods down, experiments across, the metric at each method's largest labelled set."""
    by_metric: dict[str, list[tuple[str, dict[str, tuple[str, int | None]]]]] = {}
    for stem, rows in tables:
        columns = list(rows[0])
        metrics = _float_columns(rows, columns[columns.index("seed") + 1 :])
        if not metrics:
            continue
        metric, cells = metrics[0], {}
        for method in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == method and row.get(metric, "").strip()]
            n = None
            if mine and "n_labeled" in mine[0] and all(_is_int(row["n_labeled"]) for row in mine):
                n = max(int(row["n_labeled"]) for row in mine)
                mine = [row for row in mine if int(row["n_labeled"]) == n]
            if mine:
                cells[method] = (format_mean_sd(float(row[metric]) for row in mine), n)
        by_metric.setdefault(metric, []).append((stem, cells))
    out = []
    for metric, experiments in by_metric.items():
        methods = list(dict.fromkeys(m for _, cells in experiments for m in cells))
        largest = [max((n for _, n in cells.values() if n is not None), default=None) for _, cells in experiments]
        head = "".join(
            f"<th>{html.escape(_experiment_name(stem))}" + (f"<br>n = {n}" if n is not None else "") + "</th>"
            for (stem, _), n in zip(experiments, largest)
        )
        table_rows = [f"<tr><th>method</th>{head}</tr>"]
        for method in methods:
            tds = []
            for (_, cells), n in zip(experiments, largest):
                text, own = cells.get(method, ("", None))
                note = f" <span class=note>n = {own}</span>" if text and own is not None and own != n else ""
                tds.append(f'<td class="num">{html.escape(text)}{note}</td>')
            table_rows.append(f"<tr><td>{html.escape(method)}</td>{''.join(tds)}</tr>")
        out.append(
            f"<h3>Headline: {html.escape(metric)}</h3>"
            f'<p class="note">{html.escape(metric)} of each method at its largest labelled set (n at the column\'s '
            "head unless the cell says otherwise), mean ± sd over seeds (number of seeds), rounded to the first "
            "significant digit of the standard error; a single seed keeps 3 significant digits.</p>"
            f'<div class="table-box"><table class="headline">{"".join(table_rows)}</table></div>'
        )
    return out


def _experiment_name(stem: str) -> str:
    return re.sub(r"^learning_curve_", "", stem).replace("_", " ")


def _per_method_headline(stem: str, rows: list[dict[str, str]], paths: _Paths) -> str:
    metrics = _float_columns(rows, [c for c in rows[0] if c != "method"])
    head = "".join(f"<th>{html.escape(m.replace('_', ' '))}</th>" for m in metrics)
    body = [f"<tr><th>method</th>{head}</tr>"]
    for row in rows:
        cells = "".join(
            (
                f'<td class="num" title="{html.escape(row[m])}">{format_number(float(row[m]))}</td>'
                if row.get(m, "").strip()
                else "<td></td>"
            )
            for m in metrics
        )
        body.append(f"<tr><td>{html.escape(paths.scrub(row['method']))}</td>{cells}</tr>")
    name = re.sub(r"^saliency_", "", stem).replace("_", " ")
    return (
        f"<h3>Headline: {html.escape(name)}</h3>"
        f'<p class="note">One run per method (no spread over seeds): 3 significant digits; the raw table of '
        f'<a href="#{html.escape(stem)}">{html.escape(stem)}</a> says which direction is better.</p>'
        f'<div class="table-box"><table class="headline">{"".join(body)}</table></div>'
    )


def _raw_section(stem: str, files: dict[str, Path], paths: _Paths) -> str:
    kinds = []
    if ".md" in files:
        kinds.append("markdown")
    rows = 0
    if ".csv" in files:
        with open(files[".csv"], newline="", encoding="utf-8", errors="replace") as f:
            rows = max(0, sum(1 for _ in csv.reader(f)) - 1)
        kinds.append(f"CSV, {rows} rows")
    title = _markdown_title(files[".md"]) if ".md" in files else None
    summary = html.escape(stem) + (f" — {html.escape(paths.scrub(title))}" if title else "")
    parts = [f'<details id="{html.escape(stem)}"><summary>{summary} <span class="note">({", ".join(kinds)})</span>']
    parts[-1] += "</summary>"
    if ".md" in files:
        text = paths.scrub(files[".md"].read_text(encoding="utf-8", errors="replace"))
        parts.append(f'<div class="markdown">{_boxed_tables(markdown_to_html(text))}</div>')
    if ".csv" in files:
        parts.append(_render_csv(files[".csv"], paths))
    parts.append("</details>")
    return "\n".join(parts)


def _boxed_tables(fragment: str) -> str:
    """Every table of a rendered markdown fragment in its own scrolling box."""
    return fragment.replace("<table>", '<div class="table-box raw"><table>').replace("</table>", "</table></div>")


def _render_csv(path: Path, paths: _Paths) -> str:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows:
        return f'<p class="note">{html.escape(path.name)}: empty</p>'
    header, data = rows[0], rows[1:]
    shown = data[:MAX_CSV_ROWS]
    parts = [f'<p class="note">{html.escape(path.name)} ({len(data)} rows)</p>', '<div class="table-box raw"><table>']
    parts.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in shown:
        parts.append("<tr>" + "".join(_number_cell(paths.scrub(v)) for v in row) + "</tr>")
    parts.append("</table></div>")
    if len(data) > len(shown):
        parts.append(f'<p class="note">first {len(shown)} of {len(data)} rows shown; the CSV file has them all.</p>')
    return "\n".join(parts)


def _load_json(path: Path) -> Any:
    if path.suffix.lower() != ".json":
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None


def _provenance(path: Path, artefacts: dict[str, dict[str, Path]], paths: _Paths) -> str:
    """A JSON object as a key/value table (provenance keys first); anything else as preformatted text; folded."""
    content = _load_json(path)
    if isinstance(content, dict):
        keys = [k for k in FIRST_KEYS if k in content] + [k for k in content if k not in FIRST_KEYS]
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_value(content[k], paths)}</td></tr>" for k in keys)
        table = f'<div class="table-box"><table class="meta">{rows}</table></div>'
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        table = f"<pre>{html.escape(paths.scrub(text[:MAX_TEXT]))}</pre>"
    scope = f"the runs behind {path.stem}" if path.stem in artefacts else "the folder as a whole"
    return f'<details><summary>{html.escape(path.name)} <span class="note">({scope})</span></summary>{table}</details>'


def _value(value: Any, paths: _Paths) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{html.escape(str(k))}={html.escape(paths.scrub(_short(v)))}" for k, v in value.items())
    if isinstance(value, str) and ("/" in value or " " in value):
        return f"<code>{html.escape(paths.scrub(value))}</code>"
    return html.escape(paths.scrub(_short(value)))


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else _compact(value)
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
        # a line break inside a cell, as GitHub renders it (mutation.md writes the old and the new line so)
        return f"<{tag}{align}>{_inline(text).replace('&lt;br&gt;', '<br>')}</{tag}>"

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

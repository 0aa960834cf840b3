"""bundle.report: one self-contained HTML page from a results folder, in a stable order, with provenance."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from bundle.report import markdown_to_html, write_html_report


def test_report_gathers_tables_figures_and_provenance(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "b_curve.md").write_text(
        "# Curve\n\nSome *context* with `code` & <tags>.\n\n"
        "| method | n = 25 |\n|---|---:|\n| scratch | 0.612 ± 0.010 (3) |\n| a \\| b | <x> |\n\n- one\n- two\n"
    )
    (results / "b_curve.csv").write_text("method,auc,wall\nscratch,0.612,12.3456789\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(results / "b_curve.png")
    provenance = {"command": "python x.py --out y", "host": "h", "created": "t", "cwd": str(tmp_path / "elsewhere")}
    provenance |= {"kill_rate": 0.8373951258489812, "memory": "VmHWM reset by /proc/self/clear_refs"}
    (results / "b_curve.json").write_text(json.dumps(provenance))
    (results / "a_other.csv").write_text("x\n1\n")
    (results / "notes.txt").write_text(f"made by hand in {results}/sub")  # describes the folder: no artefact's stem
    (results / "ignored.log").write_text("not a result")

    path = write_html_report(results, tmp_path / "report.html", "Results & more")
    html = path.read_text()
    assert path == tmp_path / "report.html" and "<title>Results &amp; more</title>" in html
    assert re.search(r'src="(?!data:image/png;base64,)', html) is None  # no external assets
    assert html.count("data:image/png;base64,") == 1 and "not a result" not in html
    # picture first: figures, then the raw tables by stem (markdown, then CSV), then provenance, folded
    order = ['<section id="other-figures">', "<figure", 'Curve · <a href="#b_curve">b_curve.png</a>']
    order += ['<section id="raw-tables">', '<details id="a_other">', '<details id="b_curve">', "<h3>Curve</h3>"]
    order += ["b_curve.csv (1 rows)", '<section id="provenance">', "b_curve.json", "python x.py --out y", "notes.txt"]
    positions = [html.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert html.index("<th>created</th>") < html.index("<th>command</th>")  # provenance keys first
    # markdown tables, alignment, escaping, inline markup and lists
    assert '<td style="text-align:right">0.612 ± 0.010 (3)</td>' in html
    assert (
        markdown_to_html("| a |\n|---|\n| `x`<br>`y` |")
        == "<table>\n<tr><th>a</th></tr>\n<tr><td><code>x</code><br><code>y</code></td></tr>\n</table>"
    )
    assert "<td>a | b</td>" in html and "&lt;x&gt;" in html and "&lt;tags&gt;" in html
    assert "<em>context</em>" in html and "<code>code</code>" in html and "<li>two</li>" in html
    # numbers: short ones as written, long ones rounded (the exact value in the tooltip), provenance floats rounded
    assert '<td class="num">0.612</td>' in html and '<td class="num" title="12.3456789">12.3</td>' in html
    assert "<td>0.837</td>" in html and "0.8373951258489812" not in html
    # no absolute path of this machine: the folder relative to nothing known, paths inside it relative to it
    assert str(tmp_path) not in html and "made by hand in sub" in html and "…/elsewhere" in html
    assert "reset by /proc/self/clear_refs" in html  # a system path names no folder of this machine
    # deterministic: the same folder gives the same bytes, also with the page itself written into it
    assert write_html_report(results, tmp_path / "again.html", "Results & more").read_bytes() == path.read_bytes()
    assert write_html_report(results, results / "report.html", "Results & more").read_bytes() == path.read_bytes()
    assert write_html_report(results, results / "report.html", "Results & more").read_bytes() == path.read_bytes()


def test_headline_tables_round_to_what_the_seeds_resolve(tmp_path):
    rows = ["task,method,n_labeled,seed,auc,train_seconds"]
    for seed, (small, large) in enumerate([(0.49, 0.70), (0.51, 0.701), (0.53, 0.702)]):
        rows += [f"t,kd,25,{seed},{small},1.5", f"t,kd,50,{seed},{large},2.5"]
    rows += ["t,teacher,0,0,0.79776,9.0"]
    (tmp_path / "learning_curve_t.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "saliency_t.csv").write_text("method,fidelity,maps_per_second,n_images\nmedtex,0.59375,194.4415,96\n")
    html = write_html_report(tmp_path, tmp_path / "r.html", "T").read_text()
    headline = html[html.index('<section id="learning-curves">') : html.index('<section id="saliency">')]
    # the largest labelled set only; the first metric after seed; se 0.0006 -> 3 decimals; a single seed: 3 digits
    assert "<th>t<br>n = 50</th>" in headline and "0.701 ± 0.001 (3)" in headline and "0.49" not in headline
    assert "0.798 (1) <span class=note>n = 0</span>" in headline and "train" not in headline
    saliency = html[html.index('<section id="saliency">') : html.index('<section id="raw-tables">')]
    assert ">0.594</td>" in saliency and ">194</td>" in saliency and "n images" not in saliency  # counts left out


def test_rounding_rules():
    from bundle.report import format_mean_sd, format_number

    assert format_mean_sd([0.49, 0.51, 0.53]) == "0.51 ± 0.02 (3)"  # se 0.012: the second decimal is the last
    assert format_mean_sd([0.512, 0.524, 0.498]) == "0.511 ± 0.013 (3)"  # se 0.0075
    assert format_mean_sd([0.7, 0.7]) == "0.700 ± 0.000 (2)" and format_mean_sd([0.5]) == "0.500 (1)"
    assert format_mean_sd([120.0, 180.0, 150.0]) == "150 ± 30 (3)"
    assert [format_number(v) for v in (0.79776, 0.0062395, 194.44, 81295.2, 0.99999, -0.0)] == [
        "0.798",
        "0.00624",
        "194",
        "81295",
        "1.00",
        "0",
    ]


def test_empty_folder_and_code_blocks(tmp_path):
    html = write_html_report(tmp_path / "missing", tmp_path / "r.html", "T").read_text()
    assert "No *.md, *.csv or *.png results found" in html
    assert markdown_to_html("```\n| not | a table |\n**x**\n```") == "<pre>| not | a table |\n**x**</pre>"


def test_command_line_gathers_a_folder_into_one_page(tmp_path, capsys):
    from bundle.report import main

    (tmp_path / "learning_curve_fundus.md").write_text("| method | auc |\n|---|---:|\n| medtex | 0.8 |\n")
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "saliency_cxr.png")
    path = main([str(tmp_path), "--title", "All tasks"])
    html = path.read_text()
    assert path == tmp_path / "report.html" and "<title>All tasks</title>" in html
    assert 'id="learning_curve_fundus"' in html and 'id="saliency_cxr"' in html
    assert html.count("data:image/png;base64,") == 1 and str(path) in capsys.readouterr().out

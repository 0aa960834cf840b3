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
    (results / "b_curve.csv").write_text("method,auc\nscratch,0.612\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(results / "b_curve.png")
    (results / "b_curve.json").write_text(json.dumps({"command": "python x.py --out y", "host": "h", "created": "t"}))
    (results / "a_other.csv").write_text("x\n1\n")
    (results / "notes.txt").write_text("made by hand")  # describes the folder: no artefact shares its stem
    (results / "ignored.log").write_text("not a result")

    path = write_html_report(results, tmp_path / "report.html", "Results & more")
    html = path.read_text()
    assert path == tmp_path / "report.html" and "<title>Results &amp; more</title>" in html
    assert re.search(r'src="(?!data:image/png;base64,)', html) is None  # no external assets
    assert html.count("data:image/png;base64,") == 1 and "not a result" not in html
    # stable order: folder-wide notes, then sections by stem; within one: provenance, markdown, figure, CSV
    order = ["made by hand", 'id="a_other"', 'id="b_curve"', "python x.py --out y", "<h3>Curve</h3>", "<figure>"]
    order.append("b_curve.csv (1 rows)")
    positions = [html.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert html.index("<th>created</th>") < html.index("<th>command</th>")  # provenance keys first
    # markdown tables, alignment, escaping, inline markup and lists
    assert '<td style="text-align:right">0.612 ± 0.010 (3)</td>' in html
    assert "<td>a | b</td>" in html and "&lt;x&gt;" in html and "&lt;tags&gt;" in html
    assert "<em>context</em>" in html and "<code>code</code>" in html and "<li>two</li>" in html
    assert '<td class="num">0.612</td>' in html
    assert write_html_report(results, tmp_path / "again.html", "Results & more").read_text().split("<h2")[1:] == (
        html.split("<h2")[1:]
    )


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

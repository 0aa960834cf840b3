"""scripts/refresh_doc_tables.py puts each generated table where a doc marks it, picking the table meant."""

from __future__ import annotations

import pytest

from scripts import refresh_doc_tables

GENERATED = """# learning curve

ROC AUC:

| method | n = 50 | n = 200 |
|---|---:|---:|
| scratch | 0.51 | 0.60 |
| kd | 0.66 | 0.75 |

Accuracy:

| method | n = 50 | n = 200 |
|---|---:|---:|
| scratch | 0.21 | 0.30 |
| kd | 0.32 | 0.41 |

| methods | n = 50 | n = 200 |
|---|---:|---:|
| kd - scratch | +0.15 | +0.15 |

| figure | value |
|---|---:|
| wall seconds | 85.6 |

| figure | value |
|---|---:|
| rows after the restart | 10000 |
"""

DOC = """# Results

<!-- from results/curve.md -->
| method | n = 50 |
|---|---:|
| scratch | 0.50 |
| kd | 0.60 |

Prose between.

<!-- from results/curve.md -->
| methods | n = 50 | n = 200 |
|---|---:|---:|
| kd - scratch | +0.15 | +0.15 |

<!-- from results/curve.md -->
| figure | value |
|---|---:|
| rows after the restart | 9999 |
"""


@pytest.fixture
def docs(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "curve.md").write_text(GENERATED)
    (tmp_path / "RESULTS.md").write_text(DOC)
    return tmp_path


def test_check_names_the_stale_tables_and_changes_nothing(docs, capsys):
    assert refresh_doc_tables.main(["--check", str(docs / "RESULTS.md")]) == 1
    printed = capsys.readouterr().out
    assert "stale: RESULTS.md:3 from results/curve.md" in printed and "RESULTS.md:16" in printed
    assert "RESULTS.md:11" not in printed  # the paired table is already its generated table
    assert (docs / "RESULTS.md").read_text() == DOC


def test_refresh_copies_the_table_meant_and_keeps_the_prose(docs):
    assert refresh_doc_tables.main([str(docs / "RESULTS.md")]) == 0
    text = (docs / "RESULTS.md").read_text()
    # a new size column: the first table headed "method" (ROC AUC, not accuracy), whole
    assert "| method | n = 50 | n = 200 |\n|---|---:|---:|\n| scratch | 0.51 | 0.60 |\n| kd | 0.66 | 0.75 |\n" in text
    assert "0.21" not in text and "Prose between." in text
    # of two "figure" tables, the one with the doc table's row names
    assert "| rows after the restart | 10000 |" in text and "wall seconds" not in text
    assert refresh_doc_tables.main(["--check", str(docs / "RESULTS.md")]) == 0


def test_a_marker_without_its_table_or_file_names_the_doc_line(docs):
    (docs / "RESULTS.md").write_text("<!-- from results/curve.md -->\n| other | x |\n|---|---|\n| a | 1 |\n")
    with pytest.raises(ValueError, match="RESULTS.md:1: the generated file has no table headed like"):
        refresh_doc_tables.main([str(docs / "RESULTS.md")])
    (docs / "RESULTS.md").write_text("text\n<!-- from results/missing.md -->\n| a |\n")
    with pytest.raises(FileNotFoundError, match="RESULTS.md:2: results/missing.md does not exist"):
        refresh_doc_tables.main([str(docs / "RESULTS.md")])

"""docs/README.md has the Model Zoo README sections, its links and files exist, results are linked rather than
copied, and the root README points to it with its two top commands unchanged."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "README.md"
SECTIONS = [
    "# Model Overview",
    "## Data",
    "## Training configuration",
    "### Input",
    "### Output",
    "## MONAI Bundle Commands",
    "#### Execute training",
    "#### Track the experiment with MLflow",
    "#### Override the `train` config to execute multi-GPU training",
    "#### Override the `train` config to execute evaluation with the trained model",
    "#### Execute inference",
    "#### Export checkpoint to TorchScript file",
    "#### Export checkpoint to ONNX",
    "## Performance",
    "## Limitations",
    "## References",
    "# License",
]


def test_model_zoo_sections_in_order():
    headings = [line for line in DOC.read_text().splitlines() if line.startswith("#")]
    assert [h for h in headings if h in SECTIONS] == SECTIONS


def test_links_and_named_files_exist():
    text = DOC.read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if target.startswith("http"):
            continue
        assert (DOC.parent / target).resolve().exists(), target
    for path in set(re.findall(r"\b((?:configs|scripts)/[\w/]+\.(?:yaml|json|py|sh))", text)):
        assert (ROOT / path).is_file(), path


def repository_files() -> list[Path]:
    """Docs, configs, code and tests: every file whose text a user reads."""
    suffixes = {".md", ".py", ".yaml", ".json", ".sh", ".toml", ".txt", ".cfg"}
    skip = {"mutants", ".git", "node_modules"}
    return [
        p
        for p in ROOT.rglob("*")
        if p.suffix in suffixes
        and p.is_file()
        and not skip.intersection(p.relative_to(ROOT).parts)
        and not p.relative_to(ROOT).parts[0].startswith(".")
    ]


def test_nothing_links_or_refers_outside_the_repository():
    """The repository stands alone: no markdown link leaves it, and no file names a path beside the checkout."""
    outside = re.compile(r"\.\./shared\b|/work/|\.\./\.\./")
    problems = []
    for path in repository_files():
        text = path.read_text(errors="replace")
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)", text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                resolved = (path.parent / target).resolve()
                if not resolved.is_relative_to(ROOT) or not resolved.exists():
                    problems.append(f"{path.relative_to(ROOT)}: link {target}")
        if path.name != "test_docs.py":
            problems += [f"{path.relative_to(ROOT)}: {m.group()}" for m in outside.finditer(text)]
    assert problems == []


def test_results_are_linked_not_copied():
    text = DOC.read_text()
    performance = text.split("## Performance")[1].split("## Limitations")[0]
    assert "(RESULTS.md)" in performance
    assert not re.search(r"\b0\.\d{2,}\b", performance)  # no metric values: they live in docs/RESULTS.md
    for arxiv in ("2008.02593", "2008.13574"):
        assert arxiv in text.split("## References")[1]


def test_root_readme_points_to_it_and_keeps_its_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/README.md)" in readme
    block = readme.split("```bash\n")[1].split("```")[0].splitlines()
    assert block[0].startswith("bash scripts/demo.sh ")
    assert block[1].startswith(
        "pip install torch==2.13.0 && pip install -r requirements-dev.txt && python -m pytest -n 2 "
    )

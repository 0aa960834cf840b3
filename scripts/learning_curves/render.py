"""Tables and the plot of learning curves, written from the CSV alone: mean, sd and n per method and size, and
paired differences between methods on the same labelled sets and seeds."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .methods import MEDTEX, TEACHER, available_methods
from .rows import _float

# (method, compared with): the questions the curves answer; a pair is reported where both were run on the same
# labelled sets and seeds, so that the seed-to-seed spread of the data split cancels out
PAIRS = (
    ("medtex", "scratch"),
    ("kd", "scratch"),
    ("medtex", "kd"),
    ("medtex", "transfer_student"),
    ("medtex_from_source", "transfer_student"),
    ("medtex_from_source", "medtex"),
    # the seed papers' claim against transfer learning as they ran it: generic pretraining (ImageNet's role)
    ("transfer_generic_student", "scratch"),
    ("medtex", "transfer_generic_student"),
    ("medtex", "transfer_generic_teacher"),
    ("kd", "transfer_generic_student"),
    ("kd", "transfer_generic_teacher"),
    ("transfer_generic_teacher", "transfer_generic_student"),
    ("transfer_student", "transfer_generic_student"),
)


METRICS = ("auc", "accuracy", "kappa")


def summarise(rows: list[dict[str, str]], metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    """method -> n_labeled -> (mean, sample standard deviation (0 for one seed), number of seeds)."""
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        value = _float(row.get(metric, ""))
        if value is not None:
            values.setdefault(row["method"], {}).setdefault(int(row["n_labeled"]), []).append(value)
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for method, by_size in values.items():
        for size, vals in by_size.items():
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out.setdefault(method, {})[size] = (mean, sd, len(vals))
    return out


def paired_differences(rows: list[dict[str, str]], metric: str, first: str, second: str) -> dict[int, list[float]]:
    """n_labeled -> ``metric`` of ``first`` minus that of ``second``, one value per seed both were run with."""
    values = {(r["method"], int(r["n_labeled"]), r["seed"]): _float(r.get(metric, "")) for r in rows}
    out: dict[int, list[float]] = {}
    for (method, size, seed), value in sorted(values.items()):
        other = values.get((second, size, seed))
        if method == first and value is not None and other is not None:
            out.setdefault(size, []).append(value - other)
    return out


CONFIDENCE = 0.95  # of the paired differences' intervals in the tables


def paired_interval(mean: float, sd: float, n: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """The two-sided confidence interval of a mean paired difference from its n values' mean and sample sd (Student's
    t with n - 1 degrees of freedom): the paired t-test's interval, which assumes the differences roughly normal."""
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def _t_multipliers(seed_counts: list[int]) -> str:
    """Each seed count's t multiplier in words ("t = 4.30 for 3 seeds, t = 2.78 for 5 seeds"), so the note says the
    multiplier the rows of this table use rather than one for a seed count they may not have."""
    from scipy.stats import t

    return ", ".join(f"t = {float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)):.2f} for {n} seeds" for n in seed_counts)


def _paired_lines(rows: list[dict[str, str]], sizes: list[int]) -> list[str]:
    lines = []
    seed_counts: set[int] = set()
    known = {m for pair in PAIRS for m in pair} | {TEACHER} | set(available_methods())
    own = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in known]  # --method-config methods
    for first, second in (*PAIRS, *((m, other) for m in own for other in (MEDTEX, "scratch"))):
        diffs = paired_differences(rows, "auc", first, second)
        if not diffs:
            continue
        cells = []
        for size in sizes:
            values = diffs.get(size, [])
            mean = sum(values) / len(values) if values else 0.0
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            wins = sum(v > 0 for v in values)
            interval = ""
            if len(values) > 1:
                low, high = paired_interval(mean, sd, len(values))
                seed_counts.add(len(values))
                interval = f" [{low:+.3f}, {high:+.3f}]"
            cells.append(f"{mean:+.3f} ± {sd:.3f}{interval} ({wins}/{len(values)})" if values else "")
        lines.append(f"| {first} - {second} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    header = [
        "## auc: paired differences (same labelled set and seed): mean ± sd"
        f" [{CONFIDENCE:.0%} confidence interval of the mean, paired t] (seeds where the first is higher / seeds)",
        "",
        (
            "An interval that holds 0 shows no difference at these seeds; with few seeds it is wide ("
            + _t_multipliers(sorted(seed_counts))
            + "), which is why differences under 0.03 get 5 seeds."
            if seed_counts
            else "One seed per row: no interval."
        ),
        "",
        "| methods | " + " | ".join(f"n = {s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    return header + lines + [""]


def method_order(rows: list[dict[str, str]], preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(r["method"] for r in rows))
    return [m for m in preferred if m in present] + [m for m in present if m not in preferred]


def write_markdown(path: Path, rows: list[dict[str, str]], methods: list[str], context: str) -> None:
    sizes = sorted({int(r["n_labeled"]) for r in rows if r["method"] != TEACHER})
    lines = [f"# Learning curve: {rows[0]['task'] if rows else ''}", "", context, ""]
    for metric in METRICS:
        stats = summarise(rows, metric)
        if not any(m in stats for m in methods if m != TEACHER):
            continue
        lines += [f"## {metric}: mean ± sd (n seeds)", ""]
        lines.append("| method | " + " | ".join(f"n = {s}" for s in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        for method in methods:
            if method == TEACHER or method not in stats:
                continue
            cells = [_fmt(stats[method].get(s)) for s in sizes]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if TEACHER in stats:
            mean, _, _ = stats[TEACHER][0]
            lines += ["", f"Teacher (no local labels, trained on the teacher's data): {metric} {mean:.3f}."]
        lines.append("")
    lines += _paired_lines(rows, sizes)
    lines += [code_versions(rows), ""] if rows else []  # after the blank line that ends each table
    path.write_text("\n".join(lines))


def code_versions(rows: list[dict[str, str]]) -> str:
    """Which commits made the rows (the CSV's ``code_version``), with how many rows each, most rows first."""
    counts = Counter(r.get("code_version") or "not recorded" for r in rows)
    made = "; ".join(f"{version} ({n} rows)" for version, n in counts.most_common())
    return f"Code versions (git commit that made each row, its count): {made}."


def plot(path: Path, rows: list[dict[str, str]], methods: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    stats = summarise(rows, "auc")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted({s for m, by in stats.items() if m != TEACHER for s in by})
    for method in methods:
        if method == TEACHER or method not in stats:
            continue
        xs = sorted(stats[method])
        mean = [stats[method][x][0] for x in xs]
        sd = [stats[method][x][1] for x in xs]
        (line,) = ax.plot(xs, mean, marker="o", label=method)
        low, high = [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)]
        ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
    if TEACHER in stats:
        ax.axhline(stats[TEACHER][0][0], color="gray", linestyle="--", label="teacher (no local labels)")
    ax.set_xscale("log")
    if sizes:
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labelled local training images")
    ax.set_ylabel("test ROC AUC (macro), mean ± 1 sd")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(stat: tuple[float, float, int] | None) -> str:
    return "" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f} ({stat[2]})"

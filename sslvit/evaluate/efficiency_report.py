"""The label-efficiency study's summary: mean and spread per protocol and budget, as a table
(printed and markdown) and as a figure of accuracy against the share of labels."""

import statistics
from pathlib import Path

from sslvit.evaluate.report import format_table

ENCODERS = ("pretrained", "scratch")
# the columns of the printed and the markdown table
COLUMNS = ("protocol", "labels", "n_train", "seeds", "pretrained", "scratch", "margin")


def summarize(results: list[dict], protocols, budgets) -> list[dict]:
    """Mean and spread of top-1 per protocol and budget, for both encoders, and the margin.

    Args:
        results: Single results with `protocol`, `encoder`, `labels`, `top1`, `n_train`,
            `share`.
        protocols: Protocols in the order of the rows.
        budgets: Budget names (`budget_name`) in the order of the rows.

    Returns:
        One row per protocol and budget: `protocol`, `labels`, `n_train` and `share` (mean
        number and percent of training labels), and for `pretrained` and `scratch` the mean
        top-1, its sample standard deviation over seeds (`ENCODER_std`, None for one seed)
        and the number of seeds (`ENCODER_seeds`); `margin` is pretrained minus scratch
        (None when either is missing).
    """
    rows = []
    for protocol in protocols:
        for budget in budgets:
            cell = [r for r in results if r["protocol"] == protocol and r["labels"] == budget]
            row = {"protocol": protocol, "labels": budget}
            row["n_train"] = round(statistics.mean(r["n_train"] for r in cell)) if cell else None
            row["share"] = statistics.mean(r["share"] for r in cell) if cell else None
            for encoder in ENCODERS:
                top1 = [r["top1"] for r in cell if r["encoder"] == encoder]
                row[encoder] = statistics.mean(top1) if top1 else None
                row[f"{encoder}_std"] = statistics.stdev(top1) if len(top1) > 1 else None
                row[f"{encoder}_seeds"] = len(top1)
            both = row["pretrained"] is not None and row["scratch"] is not None
            row["margin"] = row["pretrained"] - row["scratch"] if both else None
            rows.append(row)
    return rows


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def display_rows(summary: list[dict]) -> list[dict]:
    """The summary as table cells: "mean ± std" per encoder and a signed margin."""
    return [
        {
            "protocol": row["protocol"],
            "labels": row["labels"],
            "n_train": row["n_train"],
            "seeds": max(row["pretrained_seeds"], row["scratch_seeds"]),
            "pretrained": _mean_std(row["pretrained"], row["pretrained_std"]),
            "scratch": _mean_std(row["scratch"], row["scratch_std"]),
            "margin": "-" if row["margin"] is None else f"{row['margin']:+.2f}",
        }
        for row in summary
    ]


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    """A markdown table of `rows`, one column per key in `columns`; None shows as "-"."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = ["-" if row.get(c) is None else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(summary: list[dict]) -> None:
    """Print the summary as an aligned text table."""
    print(format_table(display_rows(summary), list(COLUMNS)))


def efficiency_figure(summary: list[dict], path: str | Path, title: str = "") -> Path:
    """Top-1 against the share of labels (log axis), pretrained vs scratch, with std error bars.

    Args:
        summary: Rows from `summarize`.
        path: PNG file to write; folders are created.
        title: Line above the plot.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    protocols = list(dict.fromkeys(row["protocol"] for row in summary))
    shares = set()
    for k, protocol in enumerate(protocols):
        for encoder, style, marker in (("pretrained", "-", "o"), ("scratch", "--", "s")):
            points = sorted(
                (row["share"], row[encoder], row[f"{encoder}_std"] or 0.0)
                for row in summary
                if row["protocol"] == protocol and row[encoder] is not None
            )
            if not points:
                continue
            x, y, err = zip(*points, strict=True)
            shares.update(x)
            ax.errorbar(
                x,
                y,
                yerr=err,
                color=f"C{k}",
                linestyle=style,
                marker=marker,
                capsize=3,
                label=f"{protocol}, {encoder}",
            )
    ax.set_xscale("log")
    ticks = sorted(shares)
    ax.set_xticks(ticks, [f"{s:.3g} %" for s in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labels used (% of the training set)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

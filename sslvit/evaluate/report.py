"""Evaluation results as a plain-text table and as JSON files in a run's folder."""

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from sslvit.data.folders import check_out_is_folder

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(rows: list[dict], columns: Sequence[str]) -> str:
    """An aligned plain-text table, one line per row, with a header and a rule.

    Args:
        rows: One dict per line; a missing or None value shows as "-".
        columns: The keys to show, in order; each is also its column's header.

    Returns:
        The table without a trailing newline. Numbers are right-aligned (floats with two
        decimals), everything else left-aligned.
    """
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(line[j]) for line in cells]) for j, col in enumerate(columns)]
    numeric = [
        bool(rows)
        and all(
            isinstance(row.get(col), int | float) and not isinstance(row.get(col), bool)
            for row in rows
            if row.get(col) is not None
        )
        for col in columns
    ]

    def render(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [render(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in cells]
    return "\n".join(lines)


def format_csv(rows: list[dict]) -> str:
    """CSV text with a header line: the keys of the first row, then one line per row."""
    if not rows:
        raise ValueError("no rows to write")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def tidy_floats(value, digits: int = 6):
    """`value` with every float inside it cut to `digits` significant digits, for JSON people
    read: 33.3333 rather than 33.333333333333336, 0.0140625 rather than 0.014062499999999999."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: tidy_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [tidy_floats(v, digits) for v in value]
    return value


def result_json(result, indent: int | None = None) -> str:
    """`result` as JSON with its floats tidied (`tidy_floats`): what commands print and save."""
    return json.dumps(tidy_floats(result), indent=indent)


def save_result(run_dir: str | Path, name: str, result: dict) -> Path:
    """Write `result` to `run_dir/eval/NAME.json`, atomically.

    The JSON goes to a `.tmp` file first and replaces the target in one step, so a reader never
    sees a half-written result.

    Args:
        run_dir: The run's folder.
        name: The result's name, e.g. "knn" or "linear-10pct"; letters, digits, ".", "_", "-".
        result: A JSON-serialisable dict (floats are written to 6 significant digits).

    Returns:
        The path written.
    """
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"result name {name!r} must be letters, digits, '.', '_' or '-'")
    return write_text_atomic(Path(run_dir) / "eval" / f"{name}.json", result_json(result, 2))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (plus a final newline) to `path` through a `.tmp` file and one rename.

    A reader never sees a half-written file; missing parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)
    return path


def check_new_run_dir(run_dir: Path, settings_name: str) -> None:
    """Refuse a folder that holds a run already, finished or not: its checkpoints, or the
    settings and metrics a run writes before its first checkpoint (new metrics would be
    appended to the old ones), and a file in the folder's place."""
    check_out_is_folder(run_dir)
    left = [
        name
        for name in ("checkpoints/last.pt", settings_name, "metrics.jsonl")
        if (run_dir / name).exists()
    ]
    if left:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(left)}); choose another --out"
        )

"""The run folder's outputs: ``bench.json`` (everything), ``bench.md`` (a table per benchmark) and
``<benchmark>.png`` (its figure)."""

from __future__ import annotations

import math
from pathlib import Path

from barlab.utils.io import atomic_write_json


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if value is None:
        return ""
    return str(value).replace("|", "/").replace("\n", " ")


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts) as a GitHub markdown table; columns: every key, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The whole run as markdown: machine, then per benchmark its ratios, notes and table."""
    m = report["machine"]
    gpu = m["gpu"]["name"] if m.get("gpu") else "none"
    out = [f"# barlab bench ({report['size']})", "",
           f"CPU {m['cpu_model']} ({m['cpu_count']} cores, torch threads {m['torch_num_threads']}), "
           f"torch {m['torch']}, GPU {gpu}, device {report['device']}; "
           f"warm-up {report['warmup']}, repeats {report['repeats']} (median and spread)", ""]
    for name, result in report["benchmarks"].items():
        out += [f"## {name}", ""]
        if result.get("skipped"):
            out += [result["skipped"], ""]
            continue
        if result.get("ratios"):
            out += ["Ratios: " + ", ".join(f"{k} = {_cell(v)}" for k, v in result["ratios"].items()), ""]
        out += [f"- {note}" for note in result.get("notes", [])] + ([""] if result.get("notes") else [])
        if result.get("rows"):
            out += [markdown_table(result["rows"]), ""]
        if result.get("figure"):
            out += [f"![{name}]({result['figure']})", ""]
    return "\n".join(out)


def write_report(out_dir: Path, report: dict, figures: dict) -> None:
    """``figures``: benchmark name -> matplotlib Figure or None; each saved as ``<name>.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(out_dir / f"{name}.png", dpi=110)
            report["benchmarks"][name]["figure"] = f"{name}.png"
    atomic_write_json(out_dir / "bench.json", report)
    (out_dir / "bench.md").write_text(markdown(report))

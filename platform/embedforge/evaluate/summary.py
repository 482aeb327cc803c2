"""The evaluation summary: main scores per task, the model beside its baselines (markdown, JSON, PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def summary_table(main_scores: dict[str, dict[str, float]], score_names: dict[str, str],
                  published: dict[str, dict[str, float]]) -> dict:
    """``{"columns": [...], "rows": [{"task", "metric", <column>: score|None}]}``.

    ``main_scores`` is {column: {task: score}} for evaluated models (the model first);
    ``published`` is {baseline: {task: score}}, shown as "<baseline> (published)".
    """
    columns = list(main_scores) + [f"{name} (published)" for name in published]
    merged = dict(main_scores)
    merged.update({f"{name} (published)": scores for name, scores in published.items()})
    rows = []
    for task, metric in score_names.items():
        row = {"task": task, "metric": metric}
        for col in columns:
            v = merged[col].get(task)
            row[col] = None if v is None else float(v)
        rows.append(row)
    return {"columns": columns, "rows": rows}


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = ["| task | metric | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for row in table["rows"]:
        cells = ["–" if row[c] is None else f"{row[c]:.4f}" for c in cols]
        lines.append(f"| {row['task']} | {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: dict, path: Path, title: str = "main score per task") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = table["columns"], table["rows"]
    width = 0.8 / max(1, len(cols))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows) * max(1, len(cols)) / 2 + 2), 4))
    for j, col in enumerate(cols):
        xs = [i + j * width for i in range(len(rows))]
        ys = [row[col] if row[col] is not None else math.nan for row in rows]
        bars = ax.bar(xs, ys, width, label=col)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([i + width * (len(cols) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{r['task']}\n({r['metric']})" for r in rows], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("main score")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(out_dir: Path, table: dict, extra: dict | None = None) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "summary.md", "json": out_dir / "summary.json", "chart": out_dir / "summary.png"}
    paths["markdown"].write_text("# Evaluation summary\n\n" + to_markdown(table))
    paths["json"].write_text(json.dumps({**table, **(extra or {})}, indent=2))
    bar_chart(table, paths["chart"])
    return {k: str(v) for k, v in paths.items()}

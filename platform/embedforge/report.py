"""The pipeline's final report: one markdown file with PNGs beside it (data, loss curve, scores)."""

from __future__ import annotations

import shutil
from pathlib import Path


def _bar_png(counts: dict[str, int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(list(counts), list(counts.values()), color="#4c72b0")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(cfg, run_dir: Path, results: dict) -> dict:
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# embedforge run `{cfg.run.name}`", "", f"Backbone: `{cfg.model.backbone}`, pooling "
             f"`{cfg.model.pooling}`, max length {cfg.model.max_length}.", ""]
    files = {}

    gen = results.get("generate") or {}
    if gen:
        parts += ["## Data", ""]
        per_group = gen.get("per_group") or {}
        if per_group:
            _bar_png(per_group, "kept synthetic rows per group", out / "data.png")
            files["data_png"] = str(out / "data.png")
            parts += ["![rows per group](data.png)", ""]
            parts += [_table([[g, n] for g, n in per_group.items()], ["group", "kept rows"]), ""]
        session = gen.get("this_session") or {}
        facts = [
            ["rows kept / attempts", f"{gen.get('rows', 0)} / {gen.get('attempts', 0)}"],
            ["languages", len(gen.get("per_language") or {})],
            ["teachers", ", ".join(f"{t} ({n})" for t, n in (gen.get("per_teacher") or {}).items())],
            ["reject reasons", ", ".join(f"{r}: {n}" for r, n in (gen.get("rejects") or {}).items()) or "none"],
            ["prompt / completion tokens", f"{gen.get('prompt_tokens', 0)} / {gen.get('completion_tokens', 0)}"],
            ["cost (USD)", f"{gen.get('cost_usd', 0.0):.4f}"],
        ]
        if session:
            facts.append(["completion tokens/s (last session)", session.get("completion_tokens_per_s")])
        parts += [_table(facts, ["generation", "value"]), ""]
        for name, info in (gen.get("labeled") or {}).items():
            parts += [f"Labeled set `{name}`: {info}", ""]
    split = results.get("split") or {}
    if split:
        parts += [f"Training rows: {split['train_rows']}; held-out retrieval task: "
                  f"{split['heldout']['queries']} queries over {split['heldout']['corpus']} documents.", ""]

    train = results.get("train") or {}
    if train:
        parts += ["## Training", ""]
        curve = Path(train.get("loss_curve", ""))
        if curve.is_file():
            shutil.copy(curve, out / "loss_curve.png")
            files["loss_png"] = str(out / "loss_curve.png")
            parts += ["![loss curve](loss_curve.png)", ""]
        fm = train.get("final_metrics") or {}
        keep = {k: fm[k] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "examples_per_s") if k in fm}
        if keep:
            rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in keep.items()]
            parts += [_table(rows, ["metric", "final value"]), ""]
        parts += [f"Outputs: adapter `{train.get('adapter')}`, merged model `{train.get('merged')}`, "
                  f"sentence-transformers `{train.get('sentence_transformers')}`.", ""]

    ev = results.get("evaluate") or {}
    if ev:
        parts += ["## Evaluation", ""]
        scores = ev.get("scores") or {}
        tasks = sorted({t for s in scores.values() for t in s})
        rows = [[model] + [f"{scores[model].get(t, float('nan')):.4f}" for t in tasks] for model in scores]
        parts += [_table(rows, ["model"] + tasks), ""]
        chart = Path((ev.get("summary") or {}).get("chart", ""))
        if chart.is_file():
            shutil.copy(chart, out / "scores.png")
            files["scores_png"] = str(out / "scores.png")
            parts += ["![scores](scores.png)", ""]

    sv = results.get("serve") or {}
    if sv:
        parts += ["## Serving smoke test", "",
                  f"`POST /v1/embeddings` through the official `openai` client: {sv['inputs']} inputs, "
                  f"dim {sv['dim']}, {sv['prompt_tokens']} prompt tokens, min cosine vs offline encoder "
                  f"{sv['min_cosine_vs_offline']:.6f}, latency {sv['latency_s']} s.", ""]
    md = out / "report.md"
    md.write_text("\n".join(parts))
    return {"markdown": str(md), **files}

"""The pipeline's final report: one markdown file with PNGs beside it (data, loss curve, scores)."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel


class ReportResult(BaseModel):
    markdown: str  # report.md
    data_png: str | None = None
    loss_png: str | None = None
    scores_png: str | None = None


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


def _in_this_copy(recorded: str, run_dir: Path, rel: str) -> Path:
    """A figure a stage recorded by absolute path, in this node's copy of the run: a rerun on another
    machine (or with another working copy) fetched it to ``run_dir / rel``."""
    here = run_dir / rel
    return here if here.is_file() else Path(recorded)


def write_report(cfg, run_dir: Path, results: dict) -> ReportResult:
    """``results``: stage name -> that stage's typed result (``GenerateResult``, ``SplitResult``, ...);
    a stage that did not run is absent and its section is left out."""
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# embedforge run `{cfg.run.name}`", "", f"Backbone: `{cfg.model.backbone}`, pooling "
             f"`{cfg.model.pooling}`, max length {cfg.model.max_length}.", ""]
    files = {}

    generated = results.get("generate")
    gen = generated.synthetic if generated else None
    if gen:
        parts += ["## Data", ""]
        per_group = gen.per_group
        if per_group:
            _bar_png(per_group, "kept synthetic rows per group", out / "data.png")
            files["data_png"] = str(out / "data.png")
            parts += ["![rows per group](data.png)", ""]
            parts += [_table([[g, n] for g, n in per_group.items()], ["group", "kept rows"]), ""]
        facts = [
            ["rows kept / attempts", f"{gen.rows} / {gen.attempts}"],
            ["languages", len(gen.per_language)],
            ["teachers", ", ".join(f"{t} ({n})" for t, n in gen.per_teacher.items())],
            ["reject reasons", ", ".join(f"{r}: {n}" for r, n in gen.rejects.items()) or "none"],
            ["prompt / completion tokens", f"{gen.prompt_tokens} / {gen.completion_tokens}"],
            ["cost (USD)", f"{gen.cost_usd:.4f}"],
            ["completion tokens/s (last session)", gen.this_session.completion_tokens_per_s],
        ]
        if gen.this_session.chunk_encoding_s is not None:
            facts.append(["corpus encoded for the consistency filter (last session)", f"{gen.this_session.chunk_encoding_s:.0f} s"])
        parts += [_table(facts, ["generation", "value"]), ""]
        if gen.corpus is not None:
            f = gen.corpus
            filtered = (f"top {f.consistency['top_k']} of {f.consistency['candidates']} chunks under "
                        f"`{f.consistency['model']}`" if f.consistency else "filter off")
            parts += ["Corpus-grounded queries, from the corpus to the training rows:", "",
                      _table([["documents", f.documents], [f"chunks ({f.counted_with})", f.chunks],
                              ["chunks asked about", f.chunks_asked], ["queries written", f.queries],
                              ["kept after validation", f.kept_after_validation],
                              [f"kept after consistency ({filtered})", f.kept_after_consistency],
                              ["training rows (target)", f"{f.rows} ({f.target})"]], ["funnel", "count"]), ""]
            if f.per_style:
                parts += [_table([[s, c.get("queries", 0), c.get("rows", 0)] for s, c in f.per_style.items()],
                                 ["style", "queries", "rows"]), ""]
    for name, rows in (generated.labeled if generated else {}).items():
        parts += [f"Labeled set `{name}`: {rows} rows", ""]
    split = results.get("split")
    if split:
        held = (f"{split.heldout_queries} queries over {split.heldout_corpus} documents" if split.heldout_queries
                else "none (no generated rows of the held-out groups; labeled sets are scored by their own tasks)")
        parts += [f"Training rows: {split.train_rows}; held-out retrieval task: {held}.", ""]

    train = results.get("train")
    if train:
        parts += ["## Training", ""]
        curve = _in_this_copy(train.loss_curve, run_dir, "train/loss_curve.png")
        if curve.is_file():
            shutil.copy(curve, out / "loss_curve.png")
            files["loss_png"] = str(out / "loss_curve.png")
            parts += ["![loss curve](loss_curve.png)", ""]
        fm = train.final_metrics
        keep = {k: fm[k] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "examples_per_s") if k in fm}
        if keep:
            rows = [[k, f"{v:.4g}" if isinstance(v, float) else v] for k, v in keep.items()]
            parts += [_table(rows, ["metric", "final value"]), ""]
        if len(train.loss_by_group) > 1:  # same-task batches: each group's loss on its own
            rows = [[g, v["steps"], f"{v['first']:.4g}", f"{v['median']:.4g}", f"{v['last']:.4g}"]
                    for g, v in train.loss_by_group.items()]
            parts += [_table(rows, ["batch group", "steps", "first loss", "median loss", "last loss"]), ""]
        weights = f"adapter `{train.adapter}`, merged model" if train.adapter else "fully fine-tuned model"
        parts += [f"Outputs: {weights} `{train.merged}`, sentence-transformers `{train.sentence_transformers}`.", ""]

    ev = results.get("evaluate")
    if ev:
        parts += ["## Evaluation", ""]
        scores = ev.scores
        tasks = sorted({t for s in scores.values() for t in s})
        rows = [[model] + [f"{scores[model].get(t, float('nan')):.4f}" for t in tasks] for model in scores]
        parts += [_table(rows, ["model"] + tasks), ""]
        chart = _in_this_copy(ev.summary.get("chart", ""), run_dir, "evaluate/summary.png")
        if chart.is_file():
            shutil.copy(chart, out / "scores.png")
            files["scores_png"] = str(out / "scores.png")
            parts += ["![scores](scores.png)", ""]

    sv = results.get("serve")
    if sv:
        parts += ["## Serving smoke test", "",
                  f"`POST /v1/embeddings` through the official `openai` client: {sv.inputs} inputs, "
                  f"dim {sv.dim}, {sv.prompt_tokens} prompt tokens, min cosine vs offline encoder "
                  f"{sv.min_cosine_vs_offline:.6f}, latency {sv.latency_s} s.", ""]
    md = out / "report.md"
    md.write_text("\n".join(parts))
    return ReportResult(markdown=str(md), **files)

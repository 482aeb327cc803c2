"""The ``pipeline:`` config section (kept apart from config.py like the stage sections)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedforge.config.base import Section

STAGE_ORDER = ("generate", "split", "train", "evaluate", "serve", "report")


class PipelineConfig(Section):
    # Stages to run, in order; a stage whose outputs are complete for the same config is skipped.
    stages: list[Literal["generate", "split", "train", "evaluate", "serve", "report"]] = Field(
        default_factory=lambda: list(STAGE_ORDER)
    )
    # Share of generated retrieval-style rows held out as a retrieval task (never trained on).
    heldout_fraction: float = Field(0.25, gt=0, lt=1)
    heldout_min_queries: int = Field(4, ge=1)
    # Groups whose rows become held-out retrieval queries (query -> positive among all docs).
    heldout_groups: list[str] = Field(default_factory=lambda: ["short_long", "short_short", "long_long", "sts", "bitext"])
    # Also evaluate the backbone before training, as the baseline the tuned model must beat.
    compare_with_backbone: bool = True
    # Rerun every stage even when its outputs are complete.
    force: bool = False

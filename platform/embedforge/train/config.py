from __future__ import annotations

from pydantic import Field

from embedforge.section import Section


class TrainConfig(Section):
    temperature: float = Field(0.02, gt=0)

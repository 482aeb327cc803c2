from __future__ import annotations

from embedforge.section import Section


class EvaluateConfig(Section):
    """Filled by the evaluation stage."""

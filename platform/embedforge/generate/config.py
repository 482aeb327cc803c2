from __future__ import annotations

from embedforge.section import Section


class GenerateConfig(Section):
    """Filled by the generation stage."""

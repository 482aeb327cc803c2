from __future__ import annotations

from embedforge.section import Section


class ServeConfig(Section):
    """Filled by the serving stage."""

"""The Ray Serve import path: ``embedforge.deploy:build_app`` (``serve/app.py`` re-exports it).

``serve run`` / ``serve deploy`` call it with a Serve config file's ``args``: ``config`` (a YAML path),
``overrides`` (``a.b=c``) and inline sections (``model:``, ``serve:``). The root config is assembled here,
at the entry, and ``embedforge.serving.app.build_app`` receives it whole.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from embedforge.config import config_from_args
from embedforge.serving import app as serving_app


def build_app(args: Any = None) -> Application:
    return serving_app.build_app(config_from_args(args))

"""Ray Serve entry point for ``serve run serve/config.yaml`` / ``serve deploy``: the app builder."""

from embedforge.deploy import build_app

__all__ = ["build_app"]

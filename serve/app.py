"""Ray Serve entry point for ``serve run serve/config.yaml`` / ``serve deploy``: the app builder."""

from embedforge.serving.app import build_app

__all__ = ["build_app"]

"""`bonsynth serve`: best-of-N at request time behind an OpenAI-compatible API.

    from bonsynth.serve import ServeConfig, create_app
    app = create_app(ServeConfig(policy="Qwen/Qwen2.5-0.5B-Instruct", rewards=["rm/"], n=4))
    # run with uvicorn, or mount it in your own ASGI app

Needs the `serve` extra (`pip install 'bonsynth[serve]'`: FastAPI, uvicorn, prometheus_client).
"""

from __future__ import annotations

from typing import Any

from bonsynth.serve.config import API_KEY_ENV, ServeConfig

__all__ = ["API_KEY_ENV", "ServeConfig", "create_app"]


def create_app(config: ServeConfig, **kw: Any):
    """The ASGI app (see `bonsynth.serve.app.create_app`); imported lazily so the config needs no FastAPI."""
    from bonsynth.serve.app import create_app as _create_app

    return _create_app(config, **kw)

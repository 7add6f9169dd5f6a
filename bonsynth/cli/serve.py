"""`bonsynth serve`: parse the flags, bind the socket, load the engines, run uvicorn. Nothing more."""

from __future__ import annotations

import click

from bonsynth.cli.options import build_config, config_kwargs, config_options
from bonsynth.errors import ConfigError
from bonsynth.serve.config import ServeConfig

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@config_options(ServeConfig)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve(**kw) -> None:
    """Serve best-of-N at request time behind an OpenAI-compatible API.

    Each request to /v1/chat/completions or /v1/completions samples best_of candidates (default --n),
    scores them with the RM(s) and returns the best n. Set $BONSYNTH_SERVE_API_KEY to require
    'Authorization: Bearer <key>'. SIGTERM finishes the requests in flight, then exits.

    \b
    Example:
      bonsynth serve --policy HuggingFaceTB/SmolLM2-135M-Instruct --reward rm/ --n 4
      curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
          -d '{"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hi"}]}'
    """
    import logging
    import os
    import signal
    import socket

    import uvicorn

    from bonsynth.serve import API_KEY_ENV, create_app

    log_level = kw.pop("log_level")
    config = build_config(ServeConfig, **config_kwargs(ServeConfig, kw))
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    log = logging.getLogger("bonsynth.serve")
    if config.host not in LOOPBACK and not os.environ.get(API_KEY_ENV):
        log.warning("listening on %s without an API key: anyone who can reach it can use it (set $%s)",
                    config.host, API_KEY_ENV)
    # Bind before loading models: a port in use fails in one line, at once.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {e.strerror or e}") from None
    try:
        app = create_app(config)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=None,
                                               lifespan="on"))
        # uvicorn drains on SIGTERM and then re-raises the signal; this handler takes it, so a drained
        # shutdown exits 0 rather than dying of the re-raised signal.
        signal.signal(signal.SIGTERM, lambda *_: None)
        host, port = sock.getsockname()[:2]
        log.info("serving %s (best_of %d, backend %s) on http://%s:%d/v1", config.served_name, config.n,
                 config.backend, host, port)
        server.run(sockets=[sock])
    finally:
        sock.close()

"""`bonsynth serve`: parse the flags, bind the socket, load the engines, run uvicorn. Nothing more."""

from __future__ import annotations

import click

from bonsynth.cli.generate import _weights
from bonsynth.cli.rm import UNSAFE_WEIGHTS_HELP
from bonsynth.errors import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@click.option("--policy", required=True, help="Policy model path or hub id; with --backend openai, the model name "
              "the upstream server knows.")
@click.option("--reward", "rewards", required=True, multiple=True, help="Reward model directory; repeat for several.")
@click.option("--reward-weights", default=None, help="Comma-separated weights for several RMs, e.g. 0.7,0.3.")
@click.option("--n", "n", type=int, default=4, show_default=True, help="Candidates per request (a request's "
              "best_of overrides it, up to --max-n).")
@click.option("--max-n", type=int, default=16, show_default=True, help="Largest best_of a request may ask for.")
@click.option("--backend", type=click.Choice(["hf", "vllm", "openai"]), default="hf", show_default=True,
              help="hf or vllm: the policy runs here; openai: front the OpenAI-compatible server at --base-url "
                   "(a reranking proxy; the RMs run here).")
@click.option("--base-url", default=None, help="openai backend: the upstream server, e.g. http://127.0.0.1:8001/v1.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--model-name", default=None, help="The model name clients use (default: --policy).")
@click.option("--max-tokens", type=int, default=128, show_default=True, help="max_tokens of a request that "
              "gives none.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Default for requests.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Default for requests.")
@click.option("--seed", type=int, default=0, show_default=True, help="Server seed, mixed into every request's.")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, help="Larger bodies get 413.")
@click.option("--max-pending", type=int, default=64, show_default=True,
              help="Requests queued or running at once; more get 503 (a bounded queue).")
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True,
              help="How long a request waits for others to share its generate and RM batches.")
@click.option("--max-batch", "max_batch_requests", type=int, default=16, show_default=True,
              help="Requests per generate call and per RM scoring call (1 = no cross-request batching).")
@click.option("--device", default="auto", show_default=True, help="Device for the hf backend and the RMs.")
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on a GPU, fp32 on the CPU.")
@click.option("--reward-engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True)
@click.option("--max-model-len", type=int, default=None, help="vllm backend: context length.")
@click.option("--enforce-eager", is_flag=True, help="vllm backend: no CUDA graphs / compile (faster start).")
@click.option("--upstream-api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="openai backend: environment variable holding the upstream's API key.")
@click.option("--upstream-timeout", type=float, default=60.0, show_default=True, help="openai backend, seconds.")
@click.option("--upstream-retries", type=int, default=2, show_default=True,
              help="openai backend: retries of a failed upstream call before the request gets a 502.")
@click.option("--upstream-concurrency", type=int, default=8, show_default=True,
              help="openai backend: upstream requests in flight.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True)
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
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

    from bonsynth.serve import API_KEY_ENV, ServeConfig, create_app

    log_level = kw.pop("log_level")
    config = ServeConfig(rewards=list(kw.pop("rewards")), reward_weights=_weights(kw.pop("reward_weights")), **kw)
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

"""`ServeConfig`: what `bonsynth serve` and `create_app` run with, checked when it is built.

Every bad value raises a `FieldError` naming the field (`bonsynth serve` prints it with its flags, as one line,
exit code 2), so a server never starts half-configured. Secrets are not part of it: the API key is read from the environment variable
`api_key_env` names, when the app is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bonsynth.settings import UNSAFE_WEIGHTS_HELP, FieldError, check_declared, comma_list, number, setting

SERVE_BACKENDS = ("hf", "vllm", "openai")
API_KEY_ENV = "BONSYNTH_SERVE_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    """A server's settings. Each field says its flag and help (`bonsynth.settings`): `bonsynth serve`'s options
    are generated from these fields."""

    policy: str = setting(help="Policy model path or hub id; with --backend openai, the model name the upstream "
                               "server knows.")
    rewards: list[str] = setting(flag="--reward", multiple=True, help="Reward model directory; repeat for several.")
    reward_weights: list[float] | None = setting(None, parse=comma_list(float, "numbers", "0.7,0.3"),
                                                 help="Comma-separated weights for several RMs, e.g. 0.7,0.3.")
    n: int = setting(4, ge=1, help="Candidates per request (a request's best_of overrides it, up to --max-n).")
    max_n: int = setting(16, ge=1, help="Largest best_of a request may ask for.")
    backend: str = setting("hf", choices=SERVE_BACKENDS,
                           help="hf or vllm: the policy runs here; openai: front the OpenAI-compatible server at "
                                "--base-url (a reranking proxy; the RMs run here).")
    base_url: str | None = setting(None, type=str,
                                   help="openai backend: the upstream server, e.g. http://127.0.0.1:8001/v1.")
    host: str = setting("127.0.0.1", help="Address to listen on (loopback by default).")
    port: int = setting(8000, ge=0, le=65535)
    model_name: str | None = setting(None, type=str, help="The model name clients use (default: --policy).")
    max_tokens: int = setting(128, ge=1, help="max_tokens of a request that gives none.")
    temperature: float = setting(1.0, ge=0, le=2, help="Default for requests.")
    top_p: float = setting(1.0, gt=0, le=1, help="Default for requests.")
    seed: int = setting(0, ge=0, help="Server seed, mixed into every request's.")
    max_body_bytes: int = setting(1 << 20, ge=64, help="Larger bodies get 413.")
    max_pending: int = setting(64, ge=1, help="Requests queued or running at once; more get 503 (a bounded queue).")
    batch_wait_ms: float = setting(5.0, ge=0, le=1000, help="How long a request waits for others to share its generate and RM "
                                             "batches (0 = no cross-request batching).")
    max_batch_requests: int = setting(16, ge=1, flag="--max-batch", help="Requests per generate call and per RM scoring "
                                                                   "call (1 = no cross-request batching).")
    device: str = setting("auto", help="Device for the hf backend and the RMs.")
    dtype: str = setting("auto", help="auto = bf16 on a GPU, fp32 on the CPU.")
    reward_engine: str = setting("hf", choices=("hf", "vllm"),
                                 help="Score with bonsynth's engine (hf) or vLLM's pooling runner (vllm).")
    max_model_len: int | None = setting(None, type=int, ge=1, help="vllm backend: context length.")
    enforce_eager: bool = setting(False, help="vllm backend: no CUDA graphs / compile (faster start).")
    # Speculative rejection for every request (`bonsynth.generate.prune`): a request's candidates are scored at
    # these token counts and the weakest stopped; points at or past a request's max_tokens are skipped.
    prune_at: list[int] | None = setting(
        None, parse=comma_list(int, "token counts", "16,48"),
        help="Speculative rejection: token counts (e.g. 16,48) at which each request's partial candidates are "
             "scored and the weakest stopped (points at or past a request's max_tokens are skipped); needs "
             "--prune-keep.")
    prune_keep: float | None = setting(
        None, parse=number,
        help="Share of the running candidates kept at each --prune-at point (ceil, at least 1); alone it prunes "
             "once, at max_tokens // 8. A request's n must not exceed the candidates that survive.")
    upstream_api_key_env: str = setting("OPENAI_API_KEY",
                                        help="openai backend: environment variable holding the upstream's API key.")
    upstream_timeout: float = setting(60.0, gt=0, help="openai backend, seconds.")
    upstream_retries: int = setting(2, ge=0, help="openai backend: retries of a failed upstream call before the request "
                                            "gets a 502.")
    upstream_concurrency: int = setting(8, ge=1, help="openai backend: upstream requests in flight.")
    trust_remote_code: bool = setting(False, negatable=True,
                                      help="Run model code from the model directories (policy and RMs).")
    allow_unsafe_weights: bool = setting(False, help=UNSAFE_WEIGHTS_HELP)
    api_key_env: str = setting(API_KEY_ENV, cli=False)  # where the server's own key is (read when the app is built)
    backend_options: dict = setting(default_factory=dict, cli=False)  # extra backend constructor keywords

    def __post_init__(self) -> None:
        """Every field checked when the config is built: a bad value is a `FieldError` naming the field (the
        library's words, `max_n`); `bonsynth serve` shows the same message with its flags (`--max-n`)."""
        check_declared(self)  # choices and bounds, as each field declares them
        if not self.policy:
            raise FieldError("`policy` is needed (a model path, or the upstream's model name with `backend` openai)")
        if not self.rewards:
            raise FieldError("at least one `rewards` model is needed")
        if self.reward_weights is not None:
            if len(self.rewards) == 1:
                raise FieldError("`reward_weights` needs two or more `rewards` models; drop `reward_weights`")
            if len(self.reward_weights) != len(self.rewards):
                raise FieldError(f"`reward_weights` has {len(self.reward_weights)} values for "
                                 f"{len(self.rewards)} `rewards` models")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.reward_weights):
                raise FieldError(f"`reward_weights` must be finite numbers (got {self.reward_weights})")
        if self.n > self.max_n:
            raise FieldError(f"`n` {self.n} is above `max_n` {self.max_n}")
        if (self.max_model_len is not None or self.enforce_eager) and self.backend != "vllm":
            raise FieldError("`max_model_len` and `enforce_eager` only apply to `backend` vllm")
        if self.base_url is not None and self.backend != "openai":
            raise FieldError("`base_url` is for `backend` openai (a reranking proxy in front of that server)")
        if self.backend == "openai" and not self.base_url:
            raise FieldError("`backend` openai needs `base_url` (the OpenAI-compatible server to front)")
        if not self.api_key_env:
            raise FieldError("`api_key_env` must name an environment variable")
        self.prune()

    def prune(self, max_tokens: int | None = None):
        """The prune schedule for a request's reply budget (default: --max-tokens), or None (plain best-of-N).
        A bad schedule is a `FieldError` naming the field, when the config is built."""
        from bonsynth.generate.prune import PruneConfig

        if max_tokens is None:
            try:
                return PruneConfig.resolve(self.prune_at, self.prune_keep, self.max_tokens)
            except FieldError as e:  # this server's reply budget is `max_tokens`, generate's `max_new_tokens`
                raise FieldError(e.template.replace("`max_new_tokens`", "`max_tokens`")) from None
        return PruneConfig.for_budget(self.prune_at, self.prune_keep, max_tokens)

    @property
    def served_name(self) -> str:
        """The model name the API shows (`/v1/models`, each response's `model`)."""
        return self.model_name or self.policy

    @property
    def batch_wait_s(self) -> float:
        return float(self.batch_wait_ms) / 1000.0

    def generate_config(self):
        """The same settings as a `GenerateConfig`, so backends and RMs load exactly as `bonsynth generate`
        loads them (`backend_for`, `reward_load_kwargs`, `check_model_sources`)."""
        from bonsynth.generate.pipeline import GenerateConfig

        options = dict(self.backend_options)
        if self.backend == "hf":
            options.setdefault("batch_size", self.max_batch_requests)
        if self.backend == "openai":
            options.setdefault("base_url", self.base_url)
            options.setdefault("api_key_env", self.upstream_api_key_env)
            options.setdefault("timeout", float(self.upstream_timeout))
            options.setdefault("max_retries", int(self.upstream_retries))
        return GenerateConfig(policy=self.policy, rewards=list(self.rewards), prompts="<serve>", out="", n=self.n,
                              reward_weights=self.reward_weights, backend=self.backend, device=self.device,
                              dtype=self.dtype, reward_engine=self.reward_engine, backend_options=options,
                              trust_remote_code=self.trust_remote_code,
                              allow_unsafe_weights=self.allow_unsafe_weights, max_model_len=self.max_model_len,
                              enforce_eager=self.enforce_eager, show_progress=False)

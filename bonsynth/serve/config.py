"""`ServeConfig`: what `bonsynth serve` and `create_app` run with, checked when it is built.

Every bad value raises `ConfigError` naming the flag (the CLI prints it as one line, exit code 2), so a server
never starts half-configured. Secrets are not part of it: the API key is read from the environment variable
`api_key_env` names, when the app is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bonsynth.errors import ConfigError

SERVE_BACKENDS = ("hf", "vllm", "openai")
API_KEY_ENV = "BONSYNTH_SERVE_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    policy: str  # model path / hub id (hf, vllm) or the upstream's model name (openai)
    rewards: list[str]
    reward_weights: list[float] | None = None
    n: int = 4  # default best_of: candidates sampled per request
    max_n: int = 16  # cap on a request's best_of
    backend: str = "hf"
    base_url: str | None = None  # openai backend: the upstream OpenAI-compatible server
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the name /v1/models lists (default: the policy)
    max_tokens: int = 128  # a request's max_tokens when it gives none
    temperature: float = 1.0  # defaults for requests that give none
    top_p: float = 1.0
    seed: int = 0  # mixed into every prompt seed, so two servers can sample differently
    max_body_bytes: int = 1 << 20
    max_pending: int = 64  # requests admitted at once (queued or running); more get 503
    batch_wait_ms: float = 5.0  # how long the micro-batcher waits for more requests; 0 = no cross-request batching
    max_batch_requests: int = 16  # requests per generate call (hf, vllm) and per RM scoring call
    device: str = "auto"
    dtype: str = "auto"
    reward_engine: str = "hf"
    trust_remote_code: bool = False
    allow_unsafe_weights: bool = False
    max_model_len: int | None = None  # vllm backend
    enforce_eager: bool = False  # vllm backend
    upstream_api_key_env: str = "OPENAI_API_KEY"  # openai backend: where the upstream's key is
    upstream_timeout: float = 60.0
    upstream_retries: int = 2
    upstream_concurrency: int = 8  # openai backend: upstream requests in flight
    api_key_env: str = API_KEY_ENV
    backend_options: dict = field(default_factory=dict)  # extra backend constructor keywords

    def __post_init__(self) -> None:
        def positive_int(flag: str, value: object, low: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{flag} must be an integer >= {low} (got {value!r})")

        if self.backend not in SERVE_BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(SERVE_BACKENDS)} (got {self.backend!r})")
        if not self.policy:
            raise ConfigError("--policy is needed (a model path, or the upstream's model name with --backend openai)")
        if not self.rewards:
            raise ConfigError("at least one --reward model is needed")
        if self.reward_weights is not None:
            if len(self.rewards) == 1:
                raise ConfigError("--reward-weights needs two or more --reward models; drop --reward-weights")
            if len(self.reward_weights) != len(self.rewards):
                raise ConfigError(f"--reward-weights has {len(self.reward_weights)} values for "
                                  f"{len(self.rewards)} --reward models")
            if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in self.reward_weights):
                raise ConfigError(f"--reward-weights must be finite numbers (got {self.reward_weights})")
        positive_int("--n", self.n)
        positive_int("--max-n", self.max_n)
        if self.n > self.max_n:
            raise ConfigError(f"--n {self.n} is above --max-n {self.max_n}")
        positive_int("--port", self.port, 0)
        if self.port > 65535:
            raise ConfigError(f"--port must be at most 65535 (got {self.port})")
        positive_int("--max-tokens", self.max_tokens)
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2):
            raise ConfigError(f"--temperature must be in [0, 2] (got {self.temperature!r})")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1] (got {self.top_p!r})")
        positive_int("--seed", self.seed, 0)
        positive_int("--max-body-bytes", self.max_body_bytes, 64)
        positive_int("--max-pending", self.max_pending)
        if not (isinstance(self.batch_wait_ms, (int, float)) and 0 <= self.batch_wait_ms <= 1000):
            raise ConfigError(f"--batch-wait-ms must be between 0 and 1000 (got {self.batch_wait_ms!r})")
        positive_int("--max-batch", self.max_batch_requests)
        if self.reward_engine not in ("hf", "vllm"):
            raise ConfigError(f"--reward-engine must be hf or vllm (got {self.reward_engine!r})")
        if self.max_model_len is not None:
            positive_int("--max-model-len", self.max_model_len)
        if (self.max_model_len is not None or self.enforce_eager) and self.backend != "vllm":
            raise ConfigError("--max-model-len and --enforce-eager only apply to --backend vllm")
        if self.base_url is not None and self.backend != "openai":
            raise ConfigError("--base-url is for --backend openai (a reranking proxy in front of that server)")
        if self.backend == "openai" and not self.base_url:
            raise ConfigError("--backend openai needs --base-url (the OpenAI-compatible server to front)")
        if not (isinstance(self.upstream_timeout, (int, float)) and self.upstream_timeout > 0):
            raise ConfigError(f"--upstream-timeout must be positive (got {self.upstream_timeout!r})")
        positive_int("--upstream-retries", self.upstream_retries, 0)
        positive_int("--upstream-concurrency", self.upstream_concurrency)
        if not self.api_key_env:
            raise ConfigError("api_key_env must name an environment variable")

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

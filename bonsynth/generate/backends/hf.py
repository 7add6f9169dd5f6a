"""transformers backend: `generate` over batches of prompts, left padding, n samples per prompt.

Each prompt is prefilled once: one forward pass over the batch's prompts fills the KV cache, which is then
repeated n times for the n samples, so the prompt's tokens are not recomputed per sample (what
`num_return_sequences=n` does). Best-of-N prompts are often several times longer than the replies.

Sampling is made batch-independent: a logits processor draws each row's token by the Gumbel-max trick
from that row's own generator (seeded from the run seed, the prompt id and the sample index), then hands
`generate` a one-hot distribution, so the draw does not depend on which other prompts share the batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from bonsynth.batching import token_budget_batches
from bonsynth.data.chat import has_chat_template, render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.generate.backends.base import (
    Completion,
    Continuation,
    Extension,
    GenerationBackend,
    GenerationResult,
    PreparedPrompt,
    SamplingConfig,
    cut_at_stop,
)
from bonsynth.generate.seeding import prompt_seed
from bonsynth.models import (
    check_model_source,
    check_remote_code,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)

# Padded-token budgets for one `generate` call, counted as rows x (prompt width + max_new_tokens) with
# rows = prompts x n. On the CPU, cost grows with that product (the prefill pays for every pad, its attention
# is quadratic in the width, and each decode step re-reads and re-copies the whole KV cache), while a bigger
# batch only amortises per-step Python overhead: on a 6x384 GPT-2 with n=8, 4-6k beat both per-prompt calls
# and 16k. On a GPU big batches are what makes generation fast; 131k keeps the KV cache of an 8B GQA model
# (~128 KB/token in bf16) near 16 GB, and `batch_size` still caps the prompts per call.
CPU_GENERATE_TOKEN_BUDGET = 4_096
CUDA_GENERATE_TOKEN_BUDGET = 131_072


class _PerRowSampler:
    """Logits processor: temperature, top-p, then a Gumbel-max draw from each row's own RNG."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device) -> None:
        import torch

        self.temperature = temperature
        self.top_p = top_p
        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(s)
            self.generators.append(g)
        self.device = device

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float()
        if self.temperature <= 0:
            choice = logits.argmax(dim=-1)
        else:
            logits = logits / self.temperature
            if self.top_p < 1.0:
                logits = _top_p_filter(logits, self.top_p)
            vocab = logits.shape[-1]
            # One uniform draw per row from that row's generator: the noise a row sees depends only on its
            # own seed and step, never on its neighbours in the batch.
            u = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(logits.device)
            neg_log_u = (-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20)
            gumbel = -torch.log(neg_log_u)
            choice = (logits + gumbel).argmax(dim=-1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, choice.unsqueeze(1), 0.0)
        return out


def _top_p_filter(logits, top_p: float):
    import torch

    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    cum = probs.cumsum(dim=-1)
    remove = cum - probs > top_p  # keep the smallest prefix whose mass reaches top_p (always >= 1 token)
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(1, idx, sorted_logits)


def sample_seed(run_seed: int, prompt_id: str, index: int) -> int:
    return prompt_seed(run_seed, prompt_id, salt=f"sample-{index}")


def default_generate_token_budget(device: str) -> int:
    """Modest on the CPU (padding is pure waste there), large on CUDA (batching is the speed-up)."""
    return CUDA_GENERATE_TOKEN_BUDGET if str(device).startswith("cuda") else CPU_GENERATE_TOKEN_BUDGET


def plan_generate_batches(
    prompt_lengths: Sequence[int], *, n: int, max_new_tokens: int, budget: int, batch_size: int
) -> list[list[int]]:
    """Group prompt indices into `generate` calls, longest first, each costing at most `budget` padded tokens.

    A call costs rows x (longest prompt + max_new_tokens) with rows = prompts x n, so each prompt is measured
    as `length + max_new_tokens` against `budget // n`. The 0.5 `min_fill` of `token_budget_batches` then
    bounds padding as a share of the whole padded sequence (what the prefill and the attention pay for): no
    row is more than half padding. A prompt that alone exceeds the budget gets a call of its own.
    """
    lengths = [int(k) + max_new_tokens for k in prompt_lengths]
    return token_budget_batches(lengths, max(1, budget // max(1, n)), max_batch_size=max(1, batch_size),
                                min_fill=0.5)


@dataclass(frozen=True)
class _Encoded:
    """A prompt as the model sees it: rendered text, token ids (left-truncated if so), whether too long."""

    text: str
    ids: list[int]
    too_long: bool


class HFBackend(GenerationBackend):
    """Generate with transformers on the CPU or a GPU."""

    name = "hf"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 8,
        token_budget: int | None = None,
        trust_remote_code: bool = False,
        allow_unsafe_weights: bool = False,
    ) -> None:
        """`batch_size` caps prompts per `generate` call; `token_budget` caps its padded tokens (see
        `plan_generate_batches`), by default `default_generate_token_budget(device)`."""
        import torch
        from transformers import AutoModelForCausalLM

        from bonsynth.errors import BonsynthError, ConfigError

        self.model_path = check_model_source(model, what="policy", allow_unsafe_weights=allow_unsafe_weights)
        self.device = resolve_device(device)
        self.torch_dtype = resolve_dtype(dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        if token_budget is not None and int(token_budget) < 1:
            raise ConfigError(f"token budget must be a positive number of tokens, got {token_budget}")
        self.token_budget = (int(token_budget) if token_budget is not None
                             else default_generate_token_budget(self.device))
        check_remote_code(self.model_path, trust_remote_code=trust_remote_code, what="policy")
        self.tokenizer = load_tokenizer(self.model_path, padding_side="left", trust_remote_code=trust_remote_code,
                                        what="policy")
        try:
            model_obj = AutoModelForCausalLM.from_pretrained(
                self.model_path,
                dtype=self.torch_dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if allow_unsafe_weights else True,  # opted in: either format, as the RMs
            )
        except (OSError, ValueError) as e:  # config/weights the loader cannot read: one line naming the model
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BonsynthError(f"cannot load policy {self.model_path}: {reason}") from e
        self.model = model_obj.to(self.device)
        self.model.eval()
        if self.model.generation_config.pad_token_id is None:
            self.model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self._torch = torch

    def prompt_budget(self, sampling: SamplingConfig) -> int:
        """How many prompt tokens fit in the context next to `max_new_tokens`."""
        from bonsynth.errors import ConfigError

        cfg = self.model.config
        limit = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1 << 30
        budget = limit - sampling.max_new_tokens
        if budget < 1:
            raise ConfigError(f"--max-new-tokens {sampling.max_new_tokens} leaves no room for the prompt in the "
                              f"policy's context of {limit} tokens")
        return budget

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model_path, "device": self.device,
                "dtype": str(self.torch_dtype).replace("torch.", ""), "batch_size": self.batch_size,
                "token_budget": self.token_budget}

    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        """Generate in length-sorted batches (little padding), then hand results back in input order.

        Each row draws from its own seeded generator, so the grouping changes speed, never a completion.
        """
        encoded = self._encode(prompts, sampling)
        done: dict[int, GenerationResult] = {}
        live: list[int] = []
        for i, e in enumerate(encoded):
            if e.too_long and sampling.long_prompt == "skip":
                done[i] = GenerationResult(prompt_text=e.text, prompt_tokens=len(e.ids),
                                           skipped="prompt-too-long")
            else:
                live.append(i)
        groups = plan_generate_batches([len(encoded[i].ids) for i in live], n=sampling.n,
                                       max_new_tokens=sampling.max_new_tokens, budget=self.token_budget,
                                       batch_size=self.batch_size)
        for group in groups:
            idx = [live[k] for k in group]
            batch = self._generate_batch([prompts[i] for i in idx], [encoded[i] for i in idx], sampling)
            done.update(zip(idx, batch, strict=True))
        return [done[i] for i in range(len(prompts))]

    def _encode(self, records: Sequence[PromptRecord], sampling: SamplingConfig) -> list[_Encoded]:
        """Render and tokenize each prompt once; a too-long one is left-truncated unless it is skipped."""
        tok = self.tokenizer
        budget = self.prompt_budget(sampling)
        out = []
        for r in records:
            text = render_prompt(r.prompt, tok)
            # Chat templates already carry BOS and friends; plain prompts get the tokenizer's usual specials.
            templated = r.is_chat and has_chat_template(tok)
            ids = tok(text, add_special_tokens=not templated, verbose=False)["input_ids"]  # truncated below
            too_long = len(ids) > budget
            if too_long and sampling.long_prompt != "skip":
                ids = ids[-budget:]
            out.append(_Encoded(text=text, ids=ids, too_long=too_long))
        return out

    def _generate_batch(
        self, batch: list[PromptRecord], encoded: list[_Encoded], sampling: SamplingConfig
    ) -> list[GenerationResult]:
        """One left-padded `generate` call over `batch` (prompts already encoded and within the context)."""
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        width = max(len(e.ids) for e in encoded)
        pad = tok.pad_token_id
        input_ids = [[pad] * (width - len(e.ids)) + e.ids for e in encoded]
        mask = [[0] * (width - len(e.ids)) + [1] * len(e.ids) for e in encoded]
        torch = self._torch
        input_ids_t = torch.tensor(input_ids, device=self.device)
        mask_t = torch.tensor(mask, device=self.device)

        n = sampling.n
        seeds = [sample_seed(sampling.seed, r.id, j) for r in batch for j in range(n)]
        sampler = _PerRowSampler(seeds, sampling.temperature, sampling.top_p, self.device)
        eos = tok.eos_token_id
        gen_kw = dict(
            input_ids=input_ids_t,
            attention_mask=mask_t,
            do_sample=True,
            num_return_sequences=n,
            max_new_tokens=sampling.max_new_tokens,
            logits_processor=LogitsProcessorList([sampler]),
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad,
            eos_token_id=eos,
        )
        if sampling.stop:
            gen_kw.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with torch.inference_mode():
            prefilled = self._prefill_once(input_ids_t, mask_t, n) if n > 1 and width > 1 else None
            if prefilled is not None:
                cache_name, cache = prefilled
                # the cache holds every prompt token but the last; generate feeds that one and samples on
                gen_kw.update(input_ids=input_ids_t.repeat_interleave(n, dim=0),
                              attention_mask=mask_t.repeat_interleave(n, dim=0),
                              num_return_sequences=1, **{cache_name: cache})
            out = self.model.generate(**gen_kw)
        new_tokens = out[:, width:].tolist()

        results = []
        for i, _rec in enumerate(batch):
            comps = []
            for j in range(n):
                comps.append(self._decode(new_tokens[i * n + j], sampling, eos, pad))
            results.append(GenerationResult(prompt_text=encoded[i].text, prompt_tokens=len(encoded[i].ids),
                                            completions=tuple(comps), prompt_truncated=encoded[i].too_long))
        return results

    def _prefill_once(self, input_ids, mask, n: int):
        """The KV cache of each prompt but its last token, computed once and repeated n times (row i*n+j is
        prompt i's sample j, the order `num_return_sequences` uses), with the name `generate` takes it under
        in this transformers release (`past_key_values` in 5.19, `cache` from 5.24); None where the model
        cannot take one."""
        from bonsynth.rm.prefix import cache_argument

        name = cache_argument(self.model)  # also requires position_ids
        if name is None:
            return None
        # left padding: positions count real tokens only, as generate computes them from the mask
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.model(input_ids=input_ids[:, :-1], attention_mask=mask[:, :-1],
                         position_ids=positions[:, :-1], use_cache=True)
        cache = getattr(out, name, None)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None
        cache.batch_repeat_interleave(n)
        return name, cache

    def _decode(self, ids: list[int], sampling: SamplingConfig, eos: int | None, pad: int | None) -> Completion:
        return self._decode_ids(ids, sampling, eos, pad)[1]

    def _decode_ids(self, ids: list[int], sampling: SamplingConfig, eos: int | None,
                    pad: int | None) -> tuple[list[int], Completion]:
        """The reply's token ids (cut after EOS, trailing pads dropped) and its completion."""
        finish = "length"
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos) + 1]
            finish = "stop"
        elif pad is not None and pad != eos:
            # rows that stopped on a stop string are padded afterwards
            while ids and ids[-1] == pad:
                ids = ids[:-1]
                finish = "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, sampling.stop)
        if stopped:
            finish = "stop"
        if finish == "length" and len(ids) < sampling.max_new_tokens:
            finish = "stop"
        return ids, Completion(text=text, finish_reason=finish, num_tokens=len(ids))

    # ------------------------------------------------------------------ pruned generation (segments)

    def prepare(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[PreparedPrompt]:
        """Each prompt encoded once (as `generate` encodes it), its token ids kept for the segments."""
        out = []
        for e in self._encode(prompts, sampling):
            skipped = "prompt-too-long" if e.too_long and sampling.long_prompt == "skip" else None
            res = GenerationResult(prompt_text=e.text, prompt_tokens=len(e.ids), skipped=skipped,
                                   prompt_truncated=e.too_long and skipped is None)
            out.append(PreparedPrompt(result=res, ids=tuple(e.ids)))
        return out

    def extend(self, prepared: list[PreparedPrompt], items: list[Continuation], sampling: SamplingConfig,
               max_new_tokens: int) -> list[Extension]:
        """Continue each candidate from prompt + its kept tokens (exact: token ids, no re-tokenizing), one row
        per candidate, each row sampled from its own seed; batched by the same padded-token budget as `generate`."""
        rows = [list(prepared[it.prompt].ids or ()) + list(it.tokens) for it in items]
        groups = plan_generate_batches([len(r) for r in rows], n=1, max_new_tokens=max_new_tokens,
                                       budget=self.token_budget, batch_size=self.batch_size * max(1, sampling.n))
        done: dict[int, Extension] = {}
        for group in groups:
            outs = self._extend_rows([rows[k] for k in group], [items[k] for k in group], sampling, max_new_tokens)
            done.update(zip(group, outs, strict=True))
        return [done[k] for k in range(len(items))]

    def _extend_rows(self, rows: list[list[int]], items: list[Continuation], sampling: SamplingConfig,
                     max_new_tokens: int) -> list[Extension]:
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        torch = self._torch
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        sampler = _PerRowSampler([it.seed for it in items], sampling.temperature, sampling.top_p, self.device)
        eos = tok.eos_token_id
        gen_kw = dict(input_ids=input_ids, attention_mask=mask, do_sample=True, max_new_tokens=max_new_tokens,
                      logits_processor=LogitsProcessorList([sampler]), temperature=1.0, top_k=0, top_p=1.0,
                      pad_token_id=pad, eos_token_id=eos)
        if sampling.stop:
            gen_kw.update(stop_strings=list(sampling.stop), tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(**gen_kw)
        new_tokens = out[:, width:].tolist()
        exts = []
        for it, new in zip(items, new_tokens, strict=True):
            kept = list(it.tokens)
            # "length" here means the segment ran to its end; the caller decides whether the reply is done
            seg = dataclasses.replace(sampling, max_new_tokens=len(kept) + max_new_tokens)
            ids, comp = self._decode_ids(kept + new, seg, eos, pad)
            exts.append(Extension(tokens=tuple(ids), text=comp.text, num_tokens=comp.num_tokens,
                                  finish_reason=comp.finish_reason))
        return exts

    def close(self) -> None:
        self.model = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()



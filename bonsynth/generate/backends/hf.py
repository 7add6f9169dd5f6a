"""transformers backend: `generate` over batches of prompts, left padding, `num_return_sequences=n`.

Sampling is made batch-independent: a logits processor draws each row's token by the Gumbel-max trick
from that row's own generator (seeded from the run seed, the prompt id and the sample index), then hands
`generate` a one-hot distribution, so the draw does not depend on which other prompts share the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from bonsynth.data.chat import has_chat_template, render_prompt
from bonsynth.data.records import PromptRecord
from bonsynth.generate.backends.base import Completion, GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.generate.seeding import prompt_seed
from bonsynth.models import check_model_source, load_tokenizer, pick_device, pick_dtype


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
        trust_remote_code: bool = False,
        allow_unsafe_weights: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.model_path = check_model_source(model, what="policy", allow_unsafe_weights=allow_unsafe_weights)
        self.device = pick_device(device)
        self.torch_dtype = pick_dtype(dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = load_tokenizer(self.model_path, padding_side="left", trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_path,
            dtype=self.torch_dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=not allow_unsafe_weights,
        ).to(self.device)
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
                "dtype": str(self.torch_dtype).replace("torch.", ""), "batch_size": self.batch_size}

    def generate(self, prompts: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        results: list[GenerationResult] = []
        for start in range(0, len(prompts), self.batch_size):
            results.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling))
        return results

    def _generate_batch(self, batch: list[PromptRecord], sampling: SamplingConfig) -> list[GenerationResult]:
        from transformers import LogitsProcessorList

        tok = self.tokenizer
        texts = [render_prompt(r.prompt, tok) for r in batch]
        templated = [r.is_chat and has_chat_template(tok) for r in batch]
        # Chat templates already carry BOS and friends; plain prompts get the tokenizer's usual specials.
        encoded = [tok(t, add_special_tokens=not tmpl)["input_ids"] for t, tmpl in zip(texts, templated, strict=True)]
        budget = self.prompt_budget(sampling)
        too_long = [len(ids) > budget for ids in encoded]
        if any(too_long) and sampling.long_prompt == "skip":
            keep = [i for i, t in enumerate(too_long) if not t]
            kept = self._generate_batch([batch[i] for i in keep], sampling) if keep else []
            by_index = dict(zip(keep, kept, strict=True))
            return [by_index.get(i) or GenerationResult(prompt_text=texts[i], prompt_tokens=len(encoded[i]),
                                                        skipped="prompt-too-long") for i in range(len(batch))]
        encoded = [ids[-budget:] if t else ids for ids, t in zip(encoded, too_long, strict=True)]
        width = max(len(ids) for ids in encoded)
        pad = tok.pad_token_id
        input_ids = [[pad] * (width - len(ids)) + ids for ids in encoded]
        mask = [[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded]
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
            out = self.model.generate(**gen_kw)
        new_tokens = out[:, width:].tolist()

        results = []
        for i, _rec in enumerate(batch):
            comps = []
            for j in range(n):
                comps.append(self._decode(new_tokens[i * n + j], sampling, eos, pad))
            results.append(GenerationResult(prompt_text=texts[i], prompt_tokens=len(encoded[i]),
                                            completions=tuple(comps), prompt_truncated=too_long[i]))
        return results

    def _decode(self, ids: list[int], sampling: SamplingConfig, eos: int | None, pad: int | None) -> Completion:
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
        for s in sampling.stop:
            k = text.find(s)
            if k >= 0:
                text = text[:k]
                finish = "stop"
        if finish == "length" and len(ids) < sampling.max_new_tokens:
            finish = "stop"
        return Completion(text=text, finish_reason=finish, num_tokens=len(ids))

    def close(self) -> None:
        self.model = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()



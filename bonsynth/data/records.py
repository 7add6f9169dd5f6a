"""Typed records that every reader normalises into.

Text fields are either a plain string or a chat conversation (a list of {"role", "content"} messages).
A *response* is always a plain string: the assistant's reply to the prompt.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Literal

Message = dict[str, str]
Prompt = str | list[Message]
Kind = Literal["pairwise", "binary", "ranked", "prompts"]


@dataclass(frozen=True)
class Location:
    """Where a record came from, for error messages and provenance."""

    path: str
    line: int | None = None  # 1-based line for jsonl, row index + 1 otherwise

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else self.path


@dataclass(frozen=True)
class PairRecord:
    """One preference: `chosen` is better than `rejected` as a reply to `prompt` (by at least `margin`)."""

    prompt: Prompt
    chosen: str
    rejected: str
    margin: float = 0.0
    group_id: str | None = None  # set when expanded from a ranked group
    source: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BinaryRecord:
    """Binary feedback on one reply (1 = good / thumbs-up, 0 = bad).

    `prompt` is None when the data holds only a whole text (Chai's `input_text`); then `text` is the full input.
    """

    text: str
    label: int
    prompt: Prompt | None = None
    source: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RankedGroup:
    """Several replies to one prompt with a quality score each (higher is better)."""

    group_id: str
    prompt: Prompt
    responses: tuple[str, ...]
    scores: tuple[float, ...]
    source: Location | None = field(default=None, compare=False)

    def to_pairs(self) -> list[PairRecord]:
        """All ordered pairs with a strict preference (ties give no pair); keeps the group id for NDCG."""
        pairs = []
        for i, j in itertools.permutations(range(len(self.responses)), 2):
            if self.scores[i] > self.scores[j]:
                pairs.append(
                    PairRecord(
                        prompt=self.prompt,
                        chosen=self.responses[i],
                        rejected=self.responses[j],
                        group_id=self.group_id,
                        source=self.source,
                    )
                )
        return pairs


@dataclass(frozen=True)
class PromptRecord:
    """A prompt to generate for. `id` is stable: given, or derived from the content."""

    id: str
    prompt: Prompt
    meta: dict = field(default_factory=dict, compare=False)
    source: Location | None = field(default=None, compare=False)

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)


Record = PairRecord | BinaryRecord | RankedGroup | PromptRecord


def content_id(prompt: Prompt) -> str:
    """A stable id for a prompt from its content (same text -> same id, on any machine)."""
    blob = json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "p-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

"""Turn raw rows (dicts) into typed records, detecting the kind of data from the field names.

Detection and conversion live together so they always agree on what a field means. The rules:

- pairwise: `chosen`/`rejected` or `positive`/`negative` (optional `prompt`; `input` with positive/negative);
- ranked:   `prompt` + `responses` + `ranks` (0 is best) or `scores` (higher is better);
- binary:   `input_text`/`labels`, `prompt`/`response` (or `completion`)/`label`, or `text`/`label`;
- prompts:  `prompt` or `messages`, optional `id`.

A row is the first kind (in that order) whose fields are all there. Failing that, a row holding a field that
only one kind uses (e.g. `chosen`) is that kind, so a missing companion is reported as missing instead of the
row being read as a bare prompt. `None` values count as absent (Arrow fills absent columns with nulls).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, TypeVar

from bonsynth.data.records import (
    BinaryRecord,
    Location,
    Message,
    PairRecord,
    Prompt,
    PromptRecord,
    RankedGroup,
    Record,
    content_id,
)
from bonsynth.errors import ConfigError, InputError

KINDS = ("pairwise", "binary", "ranked", "prompts")
ROLES = ("system", "user", "assistant")

# Complete field sets per kind, in detection order (pairwise first: it may also carry a `prompt`).
_SIGNATURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "pairwise": (("chosen", "rejected"), ("positive", "negative")),
    "ranked": (("prompt", "responses", "ranks"), ("prompt", "responses", "scores")),
    "binary": (
        ("input_text", "labels"),
        ("prompt", "response", "label"),
        ("prompt", "completion", "label"),
        ("text", "label"),
    ),
    "prompts": (("prompt",), ("messages",)),
}
# Fields only one kind uses: their presence decides the kind of an incomplete row.
_MARKERS: dict[str, tuple[str, ...]] = {
    "pairwise": ("chosen", "rejected", "positive", "negative"),
    "ranked": ("responses", "ranks", "scores"),
    "binary": ("input_text", "labels", "label", "text", "response", "completion"),
}
# All fields a kind reads, in the order used to describe a row ("found binary (fields input_text/labels)").
_FIELDS: dict[str, tuple[str, ...]] = {
    "pairwise": ("prompt", "input", "chosen", "rejected", "positive", "negative"),
    "ranked": ("prompt", "responses", "ranks", "scores"),
    "binary": ("input_text", "labels", "prompt", "response", "completion", "text", "label"),
    "prompts": ("prompt", "messages"),
}
_EXPECTED = "prompt/chosen/rejected, positive/negative, input_text/labels, text/label, prompt/responses/ranks, prompt/responses/scores, prompt or messages"
# hh-rlhf turn marker: at the start of the text or of a line.
_ASSISTANT = re.compile(r"(?:^|\n)Assistant:")


class Skipped:
    """The rows a `skip_invalid` read dropped: how many, their lines, and the first `SHOWN` errors.

    Real datasets hold a few broken rows (hh-rlhf has replies that are empty after the shared prompt). Dropping
    them must never be silent: each is reported as `file:line: field 'x': why`, and the count and lines go into
    the output's metadata (`to_json`).
    """

    SHOWN = 20

    def __init__(self) -> None:
        self.count = 0
        self.lines: list[int | None] = []  # every skipped row's line (1-based; record index + 1 for non-jsonl)
        self.messages: list[str] = []  # the first SHOWN errors, as `file:line: field 'x': why`

    def add(self, error: InputError) -> None:
        self.count += 1
        self.lines.append(error.line)
        if len(self.messages) < self.SHOWN:
            self.messages.append(str(error))

    def to_json(self) -> dict[str, Any]:
        """`{"num_skipped_invalid": K, "skipped_lines": [...]}`, for manifests and summaries."""
        return {"num_skipped_invalid": self.count, "skipped_lines": list(self.lines)}

    def report(self, file: IO[str] | None = None) -> None:
        """Print the skipped rows (the first SHOWN, then a count of the rest) on stderr; nothing if none."""
        out = file if file is not None else sys.stderr
        for msg in self.messages:
            print(f"skipped invalid row: {msg}", file=out)
        if self.count > len(self.messages):
            print(f"skipped invalid row: ... and {self.count - len(self.messages)} more", file=out)
        out.flush()


def invalid_rows_hint(error: InputError, count: int) -> InputError:
    """`error` (the first bad row) with how many rows fail in all, and that `--skip-invalid` drops them."""
    rows = f"{count} invalid row{'s' if count != 1 else ''}"
    hint = f" ({rows} in the file; --skip-invalid drops {'them' if count != 1 else 'it'})"
    return InputError(error.reason + hint, path=error.path, line=error.line, field=error.field)


T = TypeVar("T")


def screen_rows(
    rows: Iterable[tuple[Location, Any]],
    convert: Callable[[Location, dict], T],
    *,
    skip_invalid: bool = False,
    skipped: Skipped | None = None,
) -> Iterator[T]:
    """`convert(loc, row)` for every row; a row it refuses (an `InputError`) is dropped or fails the read.

    `rows` may hold an `InputError` in place of a row (a line that is not JSON, from
    `iter_raw_rows(keep_bad_rows=True)`): that row is invalid too. With `skip_invalid` the bad rows are recorded
    in `skipped` and the rest come out. Without it nothing comes out after the first bad row, but the rest of the
    input is still checked, so the error can say how many rows `--skip-invalid` would drop.
    """
    skipped = skipped if skipped is not None else Skipped()
    first_error: InputError | None = None
    for loc, raw in rows:
        try:
            if isinstance(raw, InputError):
                raise raw
            out = convert(loc, raw)
        except InputError as e:
            skipped.add(e)
            if not skip_invalid and first_error is None:
                first_error = e
            continue
        if first_error is None:
            yield out
    if first_error is not None:
        raise invalid_rows_hint(first_error, skipped.count)


@dataclass
class LoadedData:
    """Records of one kind from one source. `fields` are the fields that decided the kind (for messages).

    `skipped`: the invalid rows a `skip_invalid` read dropped (empty otherwise).
    """

    kind: str
    records: list
    path: str
    fields: tuple[str, ...] = field(default=())
    skipped: Skipped = field(default_factory=Skipped)


def check_fmt(fmt: str | None) -> str | None:
    """The forced kind, or None for auto-detection."""
    if fmt is None or fmt == "auto":
        return None
    if fmt not in KINDS:
        raise ConfigError(f"unknown data format {fmt!r}; expected auto, {', '.join(KINDS)}")
    return fmt


def detect_kind(row: dict) -> str | None:
    """The kind a row (with None values already dropped) is meant as, or None if it fits none."""
    for kind, signatures in _SIGNATURES.items():
        if kind != "prompts" and any(all(f in row for f in sig) for sig in signatures):
            return kind
    for kind, markers in _MARKERS.items():
        if any(f in row for f in markers):
            return kind
    if "prompt" in row or "messages" in row:
        return "prompts"
    return None


def kind_fields(row: dict, kind: str) -> tuple[str, ...]:
    """The fields of `row` that `kind` reads (e.g. ('input_text', 'labels')), to describe the row."""
    return tuple(f for f in _FIELDS[kind] if f in row)


def normalize_rows(
    rows: Iterable[tuple[Location, dict]], fmt: str | None, path: str, *, skip_invalid: bool = False
) -> LoadedData:
    """Convert all rows of one source; every row must be of the same kind (the forced one, if given).

    `skip_invalid`: drop the rows that fail validation (listed in the result's `skipped`) instead of failing.
    """
    stream = RecordStream(rows, fmt, path, skip_invalid=skip_invalid)
    records = list(stream)
    return LoadedData(kind=stream.kind, records=records, path=path, fields=stream.fields, skipped=stream.skipped)


class RecordStream:
    """The records of one source, converted one at a time: `normalize_rows` without keeping them (big inputs).

    `kind` and `fields` are set once the first record is out; an empty input fails when the rows run out.
    `validated=True` is for rows that passed a full stream before (a run reading its prompts again): no
    duplicate-id check, whose id set would cost memory, and no empty-input check, as a range of them may be empty.
    `skip_invalid=True` drops rows that fail validation (a bad field, another kind than the file's first valid
    row, a duplicate id, a line that is not JSON) and records them in `skipped` (pass one to fill it in place).
    Without it the first bad row fails, once the whole input was checked (see `screen_rows`).
    """

    def __init__(
        self,
        rows: Iterable[tuple[Location, dict]],
        fmt: str | None,
        path: str,
        *,
        validated: bool = False,
        skip_invalid: bool = False,
        skipped: Skipped | None = None,
    ) -> None:
        self.forced = check_fmt(fmt)
        self.kind: str | None = self.forced
        self.fields: tuple[str, ...] = ()
        self.path = path
        self.skip_invalid = skip_invalid
        self.skipped = skipped if skipped is not None else Skipped()
        self._rows = rows
        self._validated = validated

    def __iter__(self) -> Iterator[Record]:
        forced = self.forced
        first: list[Location] = []  # the first valid row, which fixes the kind of the file
        seen_ids: dict[str, int | None] = {}  # id -> line: no Location per id, these live as long as the pass

        def convert(loc: Location, raw: dict) -> Record:
            row = _Row({k: v for k, v in raw.items() if v is not None}, loc)
            kind = self.kind
            if forced is None:
                found = detect_kind(row.data)
                if found is None:
                    keys = ", ".join(sorted(row.data)) or "none"
                    row.fail(None, f"cannot tell the kind of data from the fields ({keys}); expected {_EXPECTED}")
                if kind is None:
                    kind = found
                elif found != kind:
                    row.fail(
                        None,
                        f"this row looks like {found} data (fields {'/'.join(kind_fields(row.data, found))}) but "
                        f"line {first[0].line} is {kind} data; all rows of a file must be the same kind",
                    )
            try:
                record = _CONVERTERS[kind](row)
            except InputError as e:
                if forced is None and e.reason.startswith("missing field"):
                    e = _with_detection_hint(e, row.data, kind)
                raise e from None
            if not self._validated:
                _check_unique(record, row, seen_ids)
            if not first:
                first.append(loc)
                self.kind = kind
            if not self.fields:
                self.fields = kind_fields(row.data, kind)
            return record

        count = 0
        for record in screen_rows(self._rows, convert, skip_invalid=self.skip_invalid, skipped=self.skipped):
            count += 1
            yield record
        if not count and not self._validated:
            if self.skipped.count:
                raise InputError(
                    f"no valid records: all {self.skipped.count} rows are invalid "
                    f"(the first: {self.skipped.messages[0]})",
                    path=self.path,
                )
            raise InputError("no records (the input is empty)", path=self.path)


def convert_row(loc: Location, raw: dict, kind: str) -> Record:
    """One row as a record of `kind` (None values dropped), or the `InputError` naming its bad field."""
    return _CONVERTERS[kind](_Row({k: v for k, v in raw.items() if v is not None}, loc))


def _with_detection_hint(e: InputError, row: dict, kind: str) -> InputError:
    # A stray field (say a `label` column in a prompts file) can make a row look like another kind.
    why = "/".join(kind_fields(row, kind))
    hint = f"; read as {kind} data because of the field(s) {why}: force the kind with fmt/--format if that is wrong"
    return InputError(e.reason + hint, path=e.path, line=e.line, field=e.field)


def _check_unique(record: Record, row: _Row, seen: dict[str, int | None]) -> None:
    # Ids key resumable generation and NDCG groups, so two rows sharing one would silently merge.
    if isinstance(record, PromptRecord):
        rid, what, key = record.id, "prompt id", "id"
    elif isinstance(record, RankedGroup):
        rid, what = record.group_id, "group id"
        key = "group_id" if "group_id" in row else "id"
    else:
        return
    if rid in seen:
        derived = rid == content_id(record.prompt)
        hint = (
            " (derived from the content: the same prompt appears twice; give each row an 'id')"
            if derived
            else ""
        )
        raise InputError(
            f"duplicate {what} {rid!r}: also on line {seen[rid]}{hint}",
            path=row.loc.path,
            line=row.loc.line,
            field=key,
        )
    seen[rid] = row.loc.line


class _Row:
    """One row plus where it came from, so every check can name the file, line and field."""

    def __init__(self, data: dict, loc: Location) -> None:
        self.data = data
        self.loc = loc

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def fail(self, field: str | None, message: str) -> NoReturn:
        raise InputError(message, path=self.loc.path, line=self.loc.line, field=field)

    def require(self, key: str, hint: str = "") -> Any:
        if key not in self.data:
            self.fail(key, "missing field" + (f" ({hint})" if hint else ""))
        return self.data[key]


# ---- field checks -------------------------------------------------------------------------------------------


def type_name(value: Any) -> str:
    """A JSON-ish name for a value's type, for error messages."""
    if value is None:
        return "null"
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _text(row: _Row, key: str, value: Any) -> str:
    if not isinstance(value, str):
        row.fail(key, f"expected a string, got {type_name(value)}")
    if not value.strip():
        row.fail(key, "is empty")
    return value


def _messages(row: _Row, key: str, value: Any) -> list[Message]:
    """A non-empty chat list; messages are reduced to role and content."""
    if not isinstance(value, list):
        row.fail(key, f"expected a list of chat messages, got {type_name(value)}")
    if not value:
        row.fail(key, "is an empty list of messages")
    out = []
    for i, m in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            row.fail(where, f"expected a message object with 'role' and 'content', got {type_name(m)}")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            row.fail(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {role!r}")
        out.append({"role": role, "content": _text(row, f"{where}.content", m.get("content"))})
    return out


def _prompt(row: _Row, key: str) -> Prompt:
    value = row.require(key)
    if isinstance(value, list):
        return _messages(row, key, value)
    if not isinstance(value, str):
        row.fail(key, f"expected a string or a list of chat messages, got {type_name(value)}")
    return _text(row, key, value)


def _response(row: _Row, key: str, value: Any) -> str:
    """A reply: a string, or (TRL conversational) a list holding one assistant message."""
    if isinstance(value, list):
        msgs = _messages(row, key, value)
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            row.fail(
                key, f"expected a list holding exactly one assistant message, got {len(msgs)} message(s)"
            )
        return msgs[0]["content"]
    return _text(row, key, value)


def _number(row: _Row, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        row.fail(key, f"expected a number, got {type_name(value)}")
    if not math.isfinite(value):
        row.fail(key, f"expected a finite number, got {value!r}")
    return float(value)


def _id(row: _Row, key: str) -> str | None:
    if key not in row:
        return None
    value = row.data[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        row.fail(key, f"expected a string or an integer, got {type_name(value)}")
    if isinstance(value, str) and not value.strip():
        row.fail(key, "is empty")
    return str(value)


# ---- one converter per kind ---------------------------------------------------------------------------------


def _to_pair(row: _Row) -> PairRecord:
    if "chosen" in row or "rejected" in row:
        good, bad = "chosen", "rejected"
    elif "positive" in row or "negative" in row:
        good, bad = "positive", "negative"
    else:
        row.fail("chosen", "missing field (pairwise data needs chosen/rejected or positive/negative)")
    a, b = row.require(good), row.require(bad)
    prompt_key = "prompt" if "prompt" in row else "input" if good == "positive" and "input" in row else None
    if prompt_key is not None:
        prompt, chosen, rejected = _prompt(row, prompt_key), _response(row, good, a), _response(row, bad, b)
    elif isinstance(a, list) and isinstance(b, list):
        prompt, chosen, rejected = _split_conversations(row, good, bad)
    elif isinstance(a, str) and isinstance(b, str):
        prompt, chosen, rejected = _split_transcripts(row, good, bad)
    else:
        row.fail(
            bad,
            f"expected the same type as '{good}' (both strings or both message lists) when there is no 'prompt'",
        )
    margin = _number(row, "margin", row.data["margin"]) if "margin" in row else 0.0
    group_id = _id(row, "group_id")  # kept when pairs expanded from ranked groups are written and read back
    return PairRecord(
        prompt=prompt, chosen=chosen, rejected=rejected, margin=margin, group_id=group_id, source=row.loc
    )


def _split_transcripts(row: _Row, good: str, bad: str) -> tuple[str, str, str]:
    """hh-rlhf: the prompt is the shared text up to and including the last shared `Assistant:`."""
    a, b = _text(row, good, row.data[good]), _text(row, bad, row.data[bad])
    shared = len(os.path.commonprefix([a, b]))
    end = None
    for m in _ASSISTANT.finditer(a, 0, shared):
        end = m.end()
    if end is None:
        row.fail(good, f"no 'prompt' field, and '{good}' and '{bad}' share no 'Assistant:' turn to split at")
    for key, text in ((good, a), (bad, b)):
        if not text[end:].strip():
            row.fail(key, "the response after the shared prompt is empty")
    return a[:end], a[end:], b[end:]


def _split_conversations(row: _Row, good: str, bad: str) -> tuple[list[Message], str, str]:
    """Full chat conversations: the prompt is the shared message prefix, then one assistant reply each."""
    a, b = _messages(row, good, row.data[good]), _messages(row, bad, row.data[bad])
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    if k == 0:
        row.fail(good, f"no 'prompt' field, and '{good}' and '{bad}' share no leading messages")
    for key, msgs in ((good, a), (bad, b)):
        rest = msgs[k:]
        if len(rest) != 1 or rest[0]["role"] != "assistant":
            row.fail(
                key,
                f"after the {k} shared prompt message(s) expected exactly one assistant message, "
                f"found {len(rest)} ({', '.join(m['role'] for m in rest) or 'none'})",
            )
    return a[:k], a[k]["content"], b[k]["content"]


def _label(row: _Row, key: str) -> int:
    value = row.require(key)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    row.fail(key, f"expected 0 or 1 (or true/false), got {value!r}")


def _to_binary(row: _Row) -> BinaryRecord:
    if "input_text" in row or "labels" in row:
        text = _text(row, "input_text", row.require("input_text"))
        return BinaryRecord(text=text, label=_label(row, "labels"), source=row.loc)
    if "response" in row or "completion" in row or ("prompt" in row and "text" not in row):
        key = "completion" if "completion" in row and "response" not in row else "response"
        prompt = _prompt(row, "prompt")
        text = _response(row, key, row.require(key))
        return BinaryRecord(text=text, label=_label(row, "label"), prompt=prompt, source=row.loc)
    text = _text(
        row,
        "text",
        row.require("text", "binary data needs input_text/labels, text/label or prompt/response/label"),
    )
    return BinaryRecord(text=text, label=_label(row, "label"), source=row.loc)


def _to_ranked(row: _Row) -> RankedGroup:
    prompt = _prompt(row, "prompt")
    responses = row.require("responses")
    if not isinstance(responses, list):
        row.fail("responses", f"expected a list of responses, got {type_name(responses)}")
    if len(responses) < 2:
        row.fail("responses", f"expected at least 2 responses, got {len(responses)}")
    replies = tuple(_response(row, f"responses[{i}]", r) for i, r in enumerate(responses))
    if "ranks" in row and "scores" in row:
        row.fail("ranks", "give either 'ranks' or 'scores', not both")
    key = "ranks" if "ranks" in row else "scores"
    values = row.require(key, "ranked data needs 'scores' (higher is better) or 'ranks' (0 is best)")
    if not isinstance(values, list):
        row.fail(key, f"expected a list of numbers, got {type_name(values)}")
    if len(values) != len(replies):
        row.fail(key, f"has {len(values)} entries but 'responses' has {len(replies)}")
    if key == "ranks":
        for i, r in enumerate(values):
            if isinstance(r, bool) or not isinstance(r, int) or r < 0:
                row.fail(f"ranks[{i}]", f"expected a rank (an integer >= 0, 0 is best), got {r!r}")
        scores = tuple(float(-r) for r in values)
    else:
        scores = tuple(_number(row, f"scores[{i}]", s) for i, s in enumerate(values))
    group_id = _id(row, "group_id") or _id(row, "id") or content_id(prompt)
    return RankedGroup(group_id=group_id, prompt=prompt, responses=replies, scores=scores, source=row.loc)


def _to_prompt(row: _Row) -> PromptRecord:
    if "prompt" in row and "messages" in row:
        row.fail("messages", "give either 'prompt' or 'messages', not both")
    if "messages" in row:
        key, prompt = "messages", _messages(row, "messages", row.data["messages"])
    else:
        key, prompt = "prompt", _prompt(row, "prompt")
    rid = _id(row, "id") or content_id(prompt)
    meta = {k: v for k, v in row.data.items() if k not in (key, "id")}
    return PromptRecord(id=rid, prompt=prompt, meta=meta, source=row.loc)


_CONVERTERS: dict[str, Callable[[_Row], Record]] = {
    "pairwise": _to_pair,
    "binary": _to_binary,
    "ranked": _to_ranked,
    "prompts": _to_prompt,
}

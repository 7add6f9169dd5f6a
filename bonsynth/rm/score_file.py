"""`bonsynth rm score`: add rewards to every record of a file, leaving the records otherwise unchanged.

What gets scored is decided by the data layer's kind detection (`bonsynth.data.detect_kind`), so that a file
means the same thing to `rm score` as to `rm train` / `rm eval`:

- binary-shaped rows (`prompt`/`messages` + `response`/`completion`, or a whole `text` / `input_text`):
  `reward`. A label is not needed to score (a placeholder is given to the validator, never written).
- pairwise rows: `reward_chosen`, `reward_rejected` and `reward_margin` (chosen minus rejected).
- ranked rows (`prompt` + `responses`; scores/ranks optional): `rewards`, one per response.
- bonsynth's own `candidates.jsonl` rows (`prompt` + `candidates: [{"text": ...}]`): a `reward` in each
  candidate.

Rows are read and scored in chunks (so big files stream) and the output is written atomically: on any error
there is no new output file. The output is strict JSON: a non-finite reward is written as null and counted
(`last_stats["num_nonfinite"]`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bonsynth.data.normalize import (
    Skipped,
    check_fmt,
    convert_row,
    detect_kind,
    kind_fields,
    normalize_rows,
    screen_rows,
)
from bonsynth.data.readers import iter_raw_rows
from bonsynth.data.records import BinaryRecord, Location, PairRecord, RankedGroup
from bonsynth.data.writers import write_jsonl_atomic
from bonsynth.errors import InputError

CHUNK_ROWS = 8192
CANDIDATES = "candidates"


def score_file(
    model: Any,
    input: str | Path,
    output: str | Path,
    *,
    fmt: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
    token_budget: int | None = None,
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
    prefix_sharing: bool | str = "auto",
    show_progress: bool | None = None,
    skip_invalid: bool = False,
    skipped: Skipped | None = None,
    stats: dict | None = None,
    report: dict | None = None,
) -> int:
    """Score every record of `input` with `model` (a directory or a `RewardModel`); returns the rows written.

    The loading options (device ... prefix_sharing) apply only when `model` is a directory; a `RewardModel`
    is used as it is. `show_progress=None` shows a bar only on a terminal. `skip_invalid` drops (and reports on
    stderr) the rows that fail validation instead of failing; pass `skipped` to get them (count and lines).
    `stats`, when given, receives the run's counts (num_rows, num_texts, num_truncated, num_nonfinite, ...), as
    `rm.last_stats` does.
    """
    from tqdm.auto import tqdm

    from bonsynth.rm.model import RewardModel

    out_stats = stats
    forced = check_fmt(fmt)
    state = _FileState(path=str(input), forced=forced)
    skipped = skipped if skipped is not None else Skipped()
    rows = screen_rows(iter_raw_rows(input, keep_bad_rows=True), lambda loc, raw: _check_row(loc, raw, state),
                       skip_invalid=skip_invalid, skipped=skipped)
    first = _take(rows, CHUNK_ROWS)  # read (and validate) the start of the input before loading the model
    if not first:
        why = f"all {skipped.count} rows are invalid" if skipped.count else "the input is empty"
        raise InputError(f"no records ({why})", path=input)
    if isinstance(model, RewardModel):
        rm = model
    else:
        rm = RewardModel.load(
            model,
            device=device,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
            allow_unsafe_weights=allow_unsafe_weights,
            prefix_sharing=prefix_sharing,
        )

    def scored() -> Iterator[dict]:
        disable = None if show_progress is None else not show_progress  # None: only on a terminal
        bar = tqdm(desc=f"scoring {Path(str(input)).name}", unit="row", disable=disable)
        try:
            chunk = first
            while chunk:
                yield from _score_chunk(rm, chunk, state, token_budget)
                bar.update(len(chunk))
                chunk = _take(rows, CHUNK_ROWS)
        finally:
            bar.close()

    n = write_jsonl_atomic(output, scored())
    skipped.report()
    stats = dict(rm.last_stats)
    stats.update(num_truncated=state.num_truncated, num_rows=n, num_texts=state.num_texts,
                 num_nonfinite=state.num_nonfinite)
    rm.last_stats = stats
    if out_stats is not None:
        out_stats.update(stats)
    if report is not None:  # how the scorer ran (`RewardModel.describe`), for the caller to show
        report.update(rm.describe())
    return n


class _FileState:
    """The kind fixed by the first row (all rows of a file are one kind) and running counts."""

    def __init__(self, path: str, forced: str | None) -> None:
        self.path = path
        self.forced = forced
        self.kind: str | None = None
        self.first: Location | None = None
        self.num_truncated = 0
        self.num_texts = 0
        self.num_nonfinite = 0


def _take(rows: Iterator[tuple[Location, dict]], n: int) -> list[tuple[Location, dict]]:
    out = []
    for item in rows:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _row_kind(loc: Location, raw: dict, state: _FileState) -> str:
    """The kind of one row (checked against the file's first row)."""
    row = {k: v for k, v in raw.items() if v is not None}
    if state.forced in (None, "prompts") and CANDIDATES in row:
        kind = CANDIDATES
    elif state.forced is not None:
        kind = state.forced
    else:
        kind = detect_kind(row) or ""
    if kind == "prompts" or not kind:
        raise InputError(
            "nothing to score: expected a response (prompt/messages + response or completion), a text "
            "(text or input_text), chosen/rejected, prompt + responses, or prompt + candidates",
            path=loc.path,
            line=loc.line,
            field="response",
        )
    if state.kind is None:
        state.kind, state.first = kind, loc
    elif kind != state.kind:
        fields = "/".join(kind_fields(row, kind)) if kind != CANDIDATES else CANDIDATES
        raise InputError(
            f"this row looks like {kind} data (fields {fields}) but line {state.first.line} is {state.kind} "
            "data; all rows of a file must be the same kind",
            path=loc.path,
            line=loc.line,
        )
    return kind


def _check_row(loc: Location, raw: dict, state: _FileState) -> tuple[Location, dict]:
    """Validate one row as `_score_chunk` reads it, so that a bad row fails (or is skipped) before scoring."""
    kind = _row_kind(loc, raw, state)
    if kind == CANDIDATES:
        _candidate_units(loc, raw)
    else:
        convert_row(loc, _for_validation(loc, raw, kind), kind)
    return loc, raw


def _for_validation(loc: Location, raw: dict, kind: str) -> dict:
    """The row as the data layer's validator needs it: labels/scores (not needed to score) get placeholders."""
    row = {k: v for k, v in raw.items() if v is not None}
    if kind == "binary":
        if "input_text" in row or "labels" in row:
            row.setdefault("labels", 0)
        else:
            row.setdefault("label", 0)
    elif kind == "ranked":
        if "ranks" not in row and "scores" not in row and isinstance(row.get("responses"), list):
            row["scores"] = [0.0] * len(row["responses"])
        # Scoring does not group: a prompt that appears twice is fine here.
        if "group_id" not in row and "id" not in row:
            row["group_id"] = f"row-{loc.line}"
    return row


def _candidate_units(loc: Location, raw: dict) -> tuple[Any, list[str]]:
    prompt_row = {k: raw[k] for k in ("prompt", "messages") if raw.get(k) is not None}
    if not prompt_row:
        raise InputError("missing field (candidates rows need a prompt)", path=loc.path, line=loc.line, field="prompt")
    prompt = normalize_rows([(loc, prompt_row)], "prompts", loc.path).records[0].prompt
    cands = raw[CANDIDATES]
    if not isinstance(cands, list) or not cands:
        raise InputError("expected a non-empty list of candidate objects", path=loc.path, line=loc.line, field=CANDIDATES)
    texts = []
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or not isinstance(c.get("text"), str):
            raise InputError(
                "expected a candidate object with a string 'text'",
                path=loc.path,
                line=loc.line,
                field=f"{CANDIDATES}[{i}].text",
            )
        texts.append(c["text"])
    return prompt, texts


def chunk_units(chunk: list[tuple[Location, dict]], state: _FileState) -> tuple[str, list[Any], list[list[int]]]:
    """What to score in one chunk of rows: (kind, units, slots), where each unit is a whole text (str) or a
    (prompt, response) pair and `slots[r]` are the indices of row r's units (one per response it holds)."""
    kinds = [_row_kind(loc, raw, state) for loc, raw in chunk]
    kind = kinds[0]
    # Each unit is a whole text (str) or a (prompt, response) pair; `slots[r]` are row r's unit indices.
    units: list[Any] = []
    slots: list[list[int]] = []

    def add(*new: Any) -> None:
        slots.append(list(range(len(units), len(units) + len(new))))
        units.extend(new)

    if kind == CANDIDATES:
        for loc, raw in chunk:
            prompt, texts = _candidate_units(loc, raw)
            add(*[(prompt, t) for t in texts])
    else:
        records = normalize_rows(
            [(loc, _for_validation(loc, raw, kind)) for loc, raw in chunk], kind, state.path
        ).records
        for rec in records:
            if isinstance(rec, BinaryRecord):
                add(rec.text if rec.prompt is None else (rec.prompt, rec.text))
            elif isinstance(rec, PairRecord):
                add((rec.prompt, rec.chosen), (rec.prompt, rec.rejected))
            elif isinstance(rec, RankedGroup):
                add(*[(rec.prompt, r) for r in rec.responses])
            else:  # pragma: no cover - _row_kind rules prompts out
                raise AssertionError(type(rec).__name__)
    return kind, units, slots


def _score_chunk(rm: Any, chunk: list[tuple[Location, dict]], state: _FileState, token_budget: int | None) -> list[dict]:
    """Score one chunk of rows; returns the output rows in input order.

    A non-finite reward (NaN/inf: a broken model or overflow) is written as null and counted: JSON has no
    NaN, and a reader that accepts Python's `NaN` token would rank it arbitrarily.
    """
    kind, units, slots = chunk_units(chunk, state)
    raw_rewards = _score_units(rm, units, token_budget, state)
    rewards: list[float | None] = [v if math.isfinite(v) else None for v in raw_rewards]
    state.num_nonfinite += sum(v is None for v in rewards)
    out = []
    for (_, raw), idx in zip(chunk, slots, strict=True):
        r = [rewards[i] for i in idx]
        row = dict(raw)
        if kind == CANDIDATES:
            row[CANDIDATES] = [{**c, "reward": v} for c, v in zip(raw[CANDIDATES], r, strict=True)]
        elif kind == "pairwise":
            margin = None if r[0] is None or r[1] is None else r[0] - r[1]
            row.update(reward_chosen=r[0], reward_rejected=r[1], reward_margin=margin)
        elif kind == "ranked":
            row["rewards"] = r
        else:
            row["reward"] = r[0]
        out.append(row)
    return out


def _score_units(rm: Any, units: list[Any], token_budget: int | None, state: _FileState) -> list[float]:
    """Rewards for a mix of whole texts and pairs (binary files may hold both), in order."""
    groups: dict[bool, list[int]] = {True: [], False: []}
    for i, u in enumerate(units):
        groups[isinstance(u, str)].append(i)
    rewards: list[float] = [0.0] * len(units)
    for idx in groups.values():
        if not idx:
            continue
        values = rm.score([units[i] for i in idx], token_budget=token_budget)
        state.num_truncated += rm.last_stats.get("num_truncated", 0)
        for i, v in zip(idx, values, strict=True):
            rewards[i] = v
    state.num_texts += len(units)
    return rewards

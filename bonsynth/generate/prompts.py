"""The prompts of a `generate` run by position, without holding them all.

As PromptRecords, a million ~1 KB prompts take about 1 GB, for the whole run. So a run from a file keeps no
list: `FilePrompts.open` reads the file once up front (every row normalised and checked, ids unique, so bad
input still fails before anything is written) and keeps only the count and one 8-byte hash per id; the run
then reads the file again, a batch at a time, from where it starts (its shard, its resume point).

The second read makes sure it sees the file that was validated: the file's size, mtime and inode are checked
before it starts and after every batch, and each record's id must hash as in the first pass. An edit in
between is one clear error, never a dataset silently made from two versions of the file.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

from bonsynth.data.normalize import RecordStream, Skipped
from bonsynth.data.readers import iter_prompts, iter_raw_rows, source_stamp
from bonsynth.data.records import PromptRecord
from bonsynth.errors import InputError


class PromptsChanged(InputError):
    """The prompts file is not the one the run validated (edited or replaced while the run was reading it)."""


class PromptSource:
    """A run's prompts by position: how many there are, and the records of any range, read when needed.

    This base serves a list already in memory (the library API and tests pass lists); `FilePrompts` reads a
    file again instead. `slice` gives a shard its own positions, numbered from 0 as `state.json` counts them.
    """

    def __init__(self, records: Sequence[PromptRecord]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def read(self, lo: int, hi: int) -> Iterator[PromptRecord]:
        """The records at positions [lo, hi) (clipped to the source), in order."""
        return iter(self._records[lo:hi])

    def check(self) -> None:
        """Raise `PromptsChanged` if the prompts are no longer the ones validated (a list cannot change)."""

    def batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, list[PromptRecord]]]:
        """`(position, batch)` from `start` to the end, cut every `batch_size` prompts from `start`.

        One pass over the source: the prompts before `start` (a resumed run's done ones) are skipped, not kept.
        """
        total = len(self)
        records = self.read(start, total)
        for lo in range(start, total, batch_size):
            batch = list(islice(records, min(batch_size, total - lo)))
            self.check()  # after reading it: the batch is from the validated file
            yield lo, batch

    def digest(self) -> str:
        """A digest of the prompts' content (each id and prompt, in order).

        `--resume` compares it with the one the run started with, so a prompts file edited between a crash and
        the resume is an error instead of a dataset made from two versions of the file.
        """
        h = hashlib.blake2b(digest_size=16)
        for rec in self.read(0, len(self)):
            _update_digest(h, rec)
        return h.hexdigest()

    def head(self, n: int) -> list[PromptRecord]:
        """The first `n` records (the Ray engine probes its replicas with one)."""
        return list(self.read(0, min(n, len(self))))

    def slice(self, lo: int, hi: int) -> PromptSource:
        """Positions [lo, hi) as a source of their own, numbered from 0 (a shard)."""
        return _Slice(self, lo, hi)


def _update_digest(h: Any, rec: PromptRecord) -> None:
    h.update(json.dumps([rec.id, rec.prompt], ensure_ascii=False, sort_keys=True, default=str).encode("utf-8"))
    h.update(b"\n")


def as_prompt_source(prompts: PromptSource | Sequence[PromptRecord]) -> PromptSource:
    """A list (or any sequence) of records wrapped in the `PromptSource` interface; a source as it is."""
    return prompts if isinstance(prompts, PromptSource) else PromptSource(prompts)


class _Slice(PromptSource):
    def __init__(self, parent: PromptSource, lo: int, hi: int) -> None:
        self._parent = parent
        self._lo = max(0, min(lo, len(parent)))
        self._hi = max(self._lo, min(hi, len(parent)))

    def __len__(self) -> int:
        return self._hi - self._lo

    def read(self, lo: int, hi: int) -> Iterator[PromptRecord]:
        lo, hi = max(0, lo), min(hi, len(self))
        return self._parent.read(self._lo + lo, self._lo + max(lo, hi))

    def check(self) -> None:
        self._parent.check()

    def digest(self) -> str:
        # The whole file's digest and the range: any edit to the file stops a shard's resume (conservative).
        return f"{self._parent.digest()}[{self._lo}:{self._hi}]"


class FilePrompts(PromptSource):
    """Prompts read from a file (jsonl, json, parquet, a save_to_disk folder or a Hub dataset), a batch at a time.

    A Hub dataset is read again from the local `datasets` cache that the first pass filled (Arrow on disk,
    memory-mapped: no Python records held). It has no file to stamp, so there only the id check applies.
    """

    def __init__(self, source: str, split: str, id_hashes: array, stamp: tuple | None,
                 digest: str | None = None, skipped: Skipped | None = None) -> None:
        self._source = source
        self._split = split
        self._ids = id_hashes
        self._stamp = stamp
        self._digest = digest
        # The invalid rows `open(skip_invalid=True)` dropped; their lines are left out when the file is read again.
        self.skipped = skipped if skipped is not None else Skipped()
        self._skip_lines = frozenset(self.skipped.lines)

    @classmethod
    def open(cls, source: str, fmt: str = "auto", limit: int | None = None, split: str = "train", *,
             skip_invalid: bool = False) -> FilePrompts:
        """Validate every row of `source` now (bad input fails here); keep the count and the ids' hashes only.

        `limit` keeps the first LIMIT prompts, as `records[:limit]` did (every row is still validated).
        `skip_invalid` drops the rows that fail validation instead of failing: positions count the valid rows
        only, and `self.skipped` lists the dropped ones (`.count`, `.lines`, `.report()`, `.to_json()`). A limit
        counts valid prompts; rows skipped after the limit are still listed.
        """
        stamp = source_stamp(source)
        hashes = array("q")  # hash() of a str is a C long: 8 bytes a prompt, not a ~1 KB record
        content = hashlib.blake2b(digest_size=16)
        skipped = Skipped()
        for i, rec in enumerate(iter_prompts(source, fmt, split, skip_invalid=skip_invalid, skipped=skipped)):
            hashes.append(hash(rec.id))
            if limit is None or i < limit:
                _update_digest(content, rec)
        if limit is not None:
            del hashes[len(range(len(hashes))[:limit]) :]  # slice semantics, a negative limit included
        # A negative limit (library use) is only known at the end: that digest is computed when asked for.
        self = cls(str(source), split, hashes, stamp, content.hexdigest() if limit is None or limit >= 0 else None,
                   skipped=skipped)
        if source_stamp(source) != stamp:
            raise self._changed("while it was being validated")
        return self

    def __len__(self) -> int:
        return len(self._ids)

    def digest(self) -> str:
        return self._digest if self._digest is not None else super().digest()

    def check(self) -> None:
        if self._stamp is not None and source_stamp(self._source) != self._stamp:
            raise self._changed("after it was validated (its size, modification time or inode differ)")

    def read(self, lo: int, hi: int) -> Iterator[PromptRecord]:
        lo, hi = max(0, lo), min(hi, len(self))
        return self._read(lo, hi) if lo < hi else iter(())

    def _read(self, lo: int, hi: int) -> Iterator[PromptRecord]:
        self.check()
        # One raw row per record, so the rows before `lo` are skipped without converting them (they passed
        # validation); the rest are converted by the same code, as the kind the first pass found. No id set:
        # the id hashes already pin every position to its validated id.
        rows = iter_raw_rows(self._source, self._split, keep_bad_rows=bool(self._skip_lines))
        if self._skip_lines:  # the rows open() dropped are not positions: leave them out before counting
            rows = (r for r in rows if r[0].line not in self._skip_lines)
        rows = islice(rows, lo, hi)
        stream = RecordStream(rows, "prompts", self._source, validated=True)
        pos = lo
        try:
            for rec in stream:
                if hash(rec.id) != self._ids[pos]:
                    where = f" ({rec.source})" if rec.source is not None else ""
                    raise self._changed(f"after it was validated (prompt {pos + 1} now has id {rec.id!r}{where})")
                yield rec
                pos += 1
        except PromptsChanged:
            raise
        except InputError:
            self.check()  # a row that passed validation fails now: say that the file changed, if it did
            raise
        if pos < hi:
            raise self._changed(f"after it was validated (it now ends after {pos} of the {len(self)} prompts)")

    def _changed(self, when: str) -> PromptsChanged:
        return PromptsChanged(
            f"the prompts file changed {when}; a run reads its prompts file again batch by batch, so it must "
            "stay as it was: restore it (then --resume), or start again with a new --out",
            path=self._source,
        )

"""Write JSON Lines so that a crash never leaves a file that looks complete but is not.

- `write_jsonl_atomic`: whole outputs. Rows go to a temp file in the same directory, which is fsynced and
  renamed over the target: readers see the old file or the new one, never half of one.
- `append_jsonl_durable`: resumable outputs. Each call appends its rows in one write and fsyncs, so what a
  call returned for is on disk. A crash *during* a write can leave a torn last line; `repair_jsonl_tail`
  cuts it off. To resume: `repair_jsonl_tail(path)`, read what is done (`iter_raw_rows`), append the rest.

Rows are JSON objects encoded by `dumps_row` (UTF-8 text stays readable, NaN refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from bonsynth.data.records import BinaryRecord, PairRecord, PromptRecord, RankedGroup, Record


def dumps_row(row: dict, *, compact: bool = False) -> str:
    """One JSONL line (with its newline), the one encoder of every JSONL file bonsynth writes.

    UTF-8 text stays readable; numpy/torch scalars and arrays (and paths) become plain JSON values; a NaN or
    inf raises, since `NaN` is not JSON and a non-finite value that got this far is a bug (rewards are
    written as null before they get here). `compact` drops the spaces after `,` and `:` (the large files
    `generate` and the loop write).
    """
    separators = (",", ":") if compact else None
    return json.dumps(row, ensure_ascii=False, separators=separators, allow_nan=False, default=_json_default) + "\n"


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch arrays and scalars
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[str]]:
    """A text file that replaces `path` atomically when the block ends (temp file, fsync, rename, fsync the
    directory): a reader sees the old file or the new one, never a half-written one, and a failure (or an
    exception in the block) leaves no temp file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the mode, as for any normally created file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Replace `path` with `text` atomically (see `atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> int:
    """Write all rows to `path` atomically; returns the row count. If anything raises, no file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(dumps_row(row))
            count += 1
    return count


def append_jsonl_durable(target: str | Path | IO[str], rows: Iterable[dict]) -> int:
    """Append rows and fsync before returning; returns the number of rows appended.

    `target` is a path (opened, appended to, closed; a torn last line is repaired first) or a text handle
    opened in append mode that the caller keeps open across calls (the caller repairs before opening).
    All rows are serialised before anything is written, so a bad row appends nothing.
    """
    rows = list(rows)
    chunk = "".join(dumps_row(row) for row in rows)
    if isinstance(target, str | Path):
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            repair_jsonl_tail(path)
        with open(path, "a", encoding="utf-8", newline="\n") as fh:
            _write_synced(fh, chunk)
    else:
        _write_synced(target, chunk)
    return len(rows)


def repair_jsonl_tail(path: str | Path) -> int:
    """Cut a torn last line (no trailing newline, left by a crash mid-write); returns the bytes removed."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        # Walk back block by block to the last newline.
        end = size
        while end > 0:
            start = max(0, end - 65536)
            fh.seek(start)
            block = fh.read(end - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        fh.truncate(keep)
        fh.flush()
        os.fsync(fh.fileno())
        return size - keep


def record_to_row(record: Record) -> dict:
    """A record as a JSON row that `load_records` reads back into an equal record."""
    if isinstance(record, PairRecord):
        row: dict = {
            "prompt": record.prompt,
            "chosen": record.chosen,
            "rejected": record.rejected,
            "margin": record.margin,
        }
        if record.group_id is not None:
            row["group_id"] = record.group_id
        return row
    if isinstance(record, BinaryRecord):
        if record.prompt is None:
            return {"text": record.text, "label": record.label}
        return {"prompt": record.prompt, "response": record.text, "label": record.label}
    if isinstance(record, RankedGroup):
        return {
            "id": record.group_id,
            "prompt": record.prompt,
            "responses": list(record.responses),
            "scores": list(record.scores),
        }
    if isinstance(record, PromptRecord):
        return {"id": record.id, "prompt": record.prompt, **record.meta}
    raise TypeError(f"not a record: {type(record).__name__}")


def _write_synced(fh: IO[str], chunk: str) -> None:
    fh.write(chunk)
    fh.flush()
    os.fsync(fh.fileno())


def fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Read raw rows from any supported source, then normalise them into typed records.

Sources: `.jsonl` (streamed line by line), `.json` (a list, or LMFlow's `{"instances": [...]}`), `.parquet`
(streamed in batches), a `datasets` save_to_disk folder (Dataset or DatasetDict), or a Hub dataset name.
Row locations: the 1-based line for jsonl, the record index + 1 for everything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from bonsynth.data.normalize import LoadedData, RecordStream, Skipped, normalize_rows, type_name
from bonsynth.data.records import BinaryRecord, Location, PairRecord, PromptRecord, RankedGroup
from bonsynth.errors import InputError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
JSON_SUFFIXES = (".json",)
PARQUET_SUFFIXES = (".parquet", ".pq")


def iter_raw_rows(
    source: str | Path, split: str = "train", *, keep_bad_rows: bool = False
) -> Iterator[tuple[Location, dict]]:
    """Yield `(location, row)` for every record of `source`, as the raw dicts (e.g. to write rows back).

    A row that is not a JSON object (bad UTF-8, malformed JSON, a list) fails the read, or with `keep_bad_rows`
    comes out as `(location, InputError)`, so that `skip_invalid` readers can drop it and go on.
    """
    for loc, row in _iter_rows(source, split):
        if isinstance(row, InputError) and not keep_bad_rows:
            raise row
        yield loc, row


def _iter_rows(source: str | Path, split: str) -> Iterator[tuple[Location, dict | InputError]]:
    path = Path(source).expanduser()
    if path.is_dir():
        yield from _iter_saved_dataset(path, split)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            yield from _iter_jsonl(path)
        elif suffix in JSON_SUFFIXES:
            yield from _iter_json(path)
        elif suffix in PARQUET_SUFFIXES:
            yield from _iter_parquet(path)
        else:
            kinds = ", ".join((*JSONL_SUFFIXES, *JSON_SUFFIXES, *PARQUET_SUFFIXES))
            raise InputError(
                f"unsupported file type {suffix or '(none)'!r}; expected {kinds} or a datasets folder",
                path=path,
            )
    elif _looks_like_hub_name(str(source)):
        yield from _iter_hub(str(source), split)
    else:
        raise InputError("file does not exist", path=source)


def load_records(
    source: str | Path, fmt: str | None = "auto", split: str = "train", *, skip_invalid: bool = False
) -> LoadedData:
    """Read `source` and normalise it; the kind is detected from the fields unless `fmt` forces it.

    By default the first invalid row fails the read (its message counts all the invalid rows). `skip_invalid`
    drops them instead: `result.skipped` lists them (`.count`, `.lines`, `.report()`, `.to_json()`).
    """
    return normalize_rows(_iter_rows(source, split), fmt, str(source), skip_invalid=skip_invalid)


def load_prompts(
    source: str | Path, fmt: str | None = "auto", split: str = "train", *, skip_invalid: bool = False
) -> list[PromptRecord]:
    return list(iter_prompts(source, fmt, split, skip_invalid=skip_invalid))


def iter_prompts(
    source: str | Path,
    fmt: str | None = "auto",
    split: str = "train",
    *,
    skip_invalid: bool = False,
    skipped: Skipped | None = None,
) -> Iterator[PromptRecord]:
    """`load_prompts` one record at a time, so a big prompts file is never held whole.

    Rows are checked as they come (unique ids too: only the ids are kept); data of another kind fails at its
    first record, with the message `load_prompts` gives. With `skip_invalid`, invalid rows are dropped and
    recorded in `skipped` (complete once the iterator is exhausted).
    """
    stream = RecordStream(_iter_rows(source, split), fmt, str(source), skip_invalid=skip_invalid, skipped=skipped)
    for record in stream:
        if stream.kind != "prompts":
            _fail_kind(stream.kind, stream.fields, "prompts", fmt, str(source))
        yield record


def source_stamp(source: str | Path) -> tuple | None:
    """A cheap fingerprint of a local source (size, mtime and inode of each of its files), None for a Hub name.

    Two equal stamps taken around a read mean the read saw the file as it was validated (no hashing: a
    multi-GB prompts file would cost a second full read).
    """
    path = Path(source).expanduser()
    if path.is_file():
        st = path.stat()
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    if path.is_dir():
        stamps = []
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                stamps.append((str(f.relative_to(path)), st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(stamps)
    return None


def load_pairs(
    source: str | Path, fmt: str | None = "auto", split: str = "train", *, skip_invalid: bool = False
) -> list[PairRecord]:
    """Pairwise records; ranked groups are expanded into their strictly ordered pairs."""
    data = load_records(source, fmt, split, skip_invalid=skip_invalid)
    if data.kind != "ranked":
        return _expect(data, "pairwise", fmt).records
    pairs = [p for group in data.records for p in group.to_pairs()]
    if not pairs:
        raise InputError("no pairs: every ranked group is a tie", path=data.path)
    return pairs


def load_binary(
    source: str | Path, fmt: str | None = "auto", split: str = "train", *, skip_invalid: bool = False
) -> list[BinaryRecord]:
    return _expect(load_records(source, fmt, split, skip_invalid=skip_invalid), "binary", fmt).records


def load_ranked(
    source: str | Path, fmt: str | None = "auto", split: str = "train", *, skip_invalid: bool = False
) -> list[RankedGroup]:
    return _expect(load_records(source, fmt, split, skip_invalid=skip_invalid), "ranked", fmt).records


def _expect(data: LoadedData, kind: str, fmt: str | None) -> LoadedData:
    if data.kind == kind:
        return data
    _fail_kind(data.kind, data.fields, kind, fmt, data.path)


def _fail_kind(found_kind: str | None, fields: tuple[str, ...], kind: str, fmt: str | None, path: str) -> NoReturn:
    found = f"{found_kind} (fields {'/'.join(fields)})" if fields else found_kind
    hint = ""
    if kind == "prompts" and fmt in (None, "auto"):
        hint = (
            "; to read only the prompts of other data, force the kind with fmt='prompts' (--format prompts)"
        )
    raise InputError(f"expected {kind} data, found {found}{hint}", path=path)


def _looks_like_hub_name(source: str) -> bool:
    """`org/name` or `name` by the one Hub-id rule (`is_hub_id`: no local folder `org/`), with no file suffix."""
    from bonsynth.modelref import is_hub_id

    suffixes = (*JSONL_SUFFIXES, *JSON_SUFFIXES, *PARQUET_SUFFIXES)
    return is_hub_id(source) and not source.lower().endswith(suffixes)


def _iter_jsonl(path: Path) -> Iterator[tuple[Location, dict | InputError]]:
    # Bytes, line by line: streams big files and lets a bad UTF-8 byte be pinned to its line. A bad line comes
    # out as its error (raised by iter_raw_rows, dropped by skip_invalid readers).
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            loc = Location(str(path), n)
            try:
                text = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield loc, InputError(
                    f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})", path=path, line=n
                )
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield loc, InputError(f"malformed JSON: {e.msg} (column {e.colno})", path=path, line=n)
                continue
            if not isinstance(row, dict):
                yield loc, InputError(f"expected a JSON object, got {type_name(row)}", path=path, line=n)
                continue
            yield loc, row


def _iter_json(path: Path) -> Iterator[tuple[Location, dict | InputError]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"not valid UTF-8 (byte 0x{data[e.start]:02x})", path=path, line=line) from None
    if not text.strip():
        raise InputError("no records (the file is empty)", path=path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            yield from _iter_jsonl(path)  # JSON Lines saved as .json (common for hh-rlhf dumps)
            return
        raise InputError(
            f"malformed JSON: {e.msg} (line {e.lineno}, column {e.colno})", path=path, line=e.lineno
        ) from None
    if isinstance(obj, dict):
        if "instances" not in obj:
            raise InputError(
                "expected a list of records or an object with an 'instances' list (LMFlow)",
                path=path,
                field="instances",
            )
        obj = obj["instances"]
        if not isinstance(obj, list):
            raise InputError(f"expected a list, got {type_name(obj)}", path=path, field="instances")
    elif not isinstance(obj, list):
        raise InputError(f"expected a list of records, got {type_name(obj)}", path=path)
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            row = InputError(f"expected a JSON object, got {type_name(row)}", path=path, line=i + 1)
        yield Location(str(path), i + 1), row


def _iter_parquet(path: Path) -> Iterator[tuple[Location, dict]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-parquet file
        raise InputError(f"not a readable parquet file: {e}", path=path) from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield Location(str(path), n), row


def _iter_saved_dataset(path: Path, split: str) -> Iterator[tuple[Location, dict]]:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise InputError(
            "is a directory but not a datasets save_to_disk folder (no dataset_dict.json or state.json)",
            path=path,
        )
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (
        Exception
    ) as e:  # a damaged folder can fail in many ways; the user needs the reason, not a traceback
        raise InputError(f"could not load the saved dataset: {e}", path=path) from None
    yield from _iter_dataset(ds, str(path), split)


def _iter_hub(name: str, split: str) -> Iterator[tuple[Location, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name, unknown split, ...: all are the user's to fix
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise InputError(
            f"no such local file, and loading it as a Hub dataset (split {split!r}) failed: {reason}",
            path=name,
        ) from e
    yield from _iter_dataset(ds, name, split)


def _iter_dataset(ds: Any, where: str, split: str) -> Iterator[tuple[Location, dict]]:
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"no split {split!r} (available: {', '.join(ds)})", path=where)
        ds = ds[split]
    for i, row in enumerate(ds):
        yield Location(where, i + 1), row

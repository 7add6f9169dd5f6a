"""Data layer: read jsonl / json / parquet / save-to-disk / hub datasets into typed records.

Public surface:
- `load_records(source, fmt="auto", split="train", skip_invalid=False) -> LoadedData`: detect (or force with
  `fmt`) the kind and normalise every row; bad input raises one `InputError` naming the file, line and field
  (and how many rows are invalid in all). `skip_invalid=True` drops the invalid rows instead: `LoadedData.skipped`
  (a `Skipped`) lists them.
- `load_yaml` / `parse_yaml` (`bonsynth.data.yaml_io`): the one YAML loader for configs and recipes.
- `load_prompts`, `load_pairs` (ranked groups expand to pairs), `load_binary`, `load_ranked`: one kind only;
  `iter_prompts` is `load_prompts` one record at a time (big prompt files are never held whole).
- `iter_raw_rows`: the raw dict rows with their locations (to write rows back with extra fields);
  `normalize_rows` turns such rows into records (each keeps its `source` location).
- `write_jsonl_atomic`: write a whole file so that a crash never leaves a half-written one.
- `append_jsonl_durable` + `repair_jsonl_tail`: fsynced appends for resumable outputs.
"""

from bonsynth.data.normalize import KINDS, LoadedData, Skipped, detect_kind, normalize_rows
from bonsynth.data.readers import (
    iter_prompts,
    iter_raw_rows,
    load_binary,
    load_pairs,
    load_prompts,
    load_ranked,
    load_records,
)
from bonsynth.data.records import (
    BinaryRecord,
    Location,
    PairRecord,
    PromptRecord,
    RankedGroup,
    content_id,
)
from bonsynth.data.writers import (
    append_jsonl_durable,
    dumps_row,
    record_to_row,
    repair_jsonl_tail,
    write_jsonl_atomic,
)

__all__ = [
    "KINDS",
    "BinaryRecord",
    "LoadedData",
    "Location",
    "PairRecord",
    "PromptRecord",
    "RankedGroup",
    "Skipped",
    "append_jsonl_durable",
    "content_id",
    "detect_kind",
    "dumps_row",
    "iter_prompts",
    "iter_raw_rows",
    "load_binary",
    "load_pairs",
    "load_prompts",
    "load_ranked",
    "load_records",
    "normalize_rows",
    "record_to_row",
    "repair_jsonl_tail",
    "write_jsonl_atomic",
]

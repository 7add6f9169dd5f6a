"""Data layer: read jsonl / json / parquet / save-to-disk / hub datasets into typed records.

Public surface:
- `load_records(source, fmt=None) -> LoadedData`: detect (or force with `fmt`) the kind and normalise.
- `load_prompts`, `load_pairs`, `load_binary`, `load_ranked`: the same, insisting on one kind.
- `write_jsonl_atomic`: write records so that a crash never leaves a half-written file.
"""

from bonsynth.data.records import (
    BinaryRecord,
    Location,
    PairRecord,
    PromptRecord,
    RankedGroup,
    content_id,
)

__all__ = [
    "BinaryRecord",
    "Location",
    "PairRecord",
    "PromptRecord",
    "RankedGroup",
    "content_id",
]

"""`bonsynth_rm.json`: what a saved reward model is, beside its weights.

One reward convention everywhere: a scalar where higher is better.
- A 1-label head: the logit itself.
- A 2-label classifier (thumbs-up model): logit[1] - logit[0], the log-odds of "good".
`reward_mean` / `reward_std` (measured on the eval split) let several RMs be z-normalised and mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

META_FILE = "bonsynth_rm.json"
OBJECTIVES = ("pairwise", "binary", "ranked", "merged")


@dataclass
class RMMeta:
    objective: str
    num_labels: int = 1
    label_mapping: dict[str, str] = field(default_factory=lambda: {"0": "reward"})
    reward_mean: float = 0.0
    reward_std: float = 1.0
    data_hashes: dict[str, str] = field(default_factory=dict)
    base_model: str | None = None
    max_length: int | None = None
    extra: dict = field(default_factory=dict)
    version: int = 1

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / META_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> RMMeta | None:
        path = Path(directory) / META_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hash of a data file (or of every file under a folder, in sorted order)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()

"""`bonsynth_rm.json`: what a saved reward model is, beside its weights.

One reward convention everywhere: a scalar where higher is better.
- A 1-label head: the logit itself.
- A 2-label classifier (thumbs-up model): logit[1] - logit[0], the log-odds of "good".
`reward_mean` / `reward_std` (measured on the eval split) let several RMs be z-normalised and mixed.
`reward_stats_source` says where they come from: "train:eval" / "train:train" (`rm train`), "calibrate:<sha256
of the data file>" (`rm calibrate`), or "unmeasured" (a merge: 0 / 1 are placeholders). None: an older file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bonsynth.data.writers import write_text_atomic

META_FILE = "bonsynth_rm.json"
OBJECTIVES = ("pairwise", "binary", "ranked", "merged")
UNMEASURED = "unmeasured"


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
    reward_stats_source: str | None = None

    @property
    def stats_measured(self) -> bool:
        """Whether reward_mean / reward_std were measured (False for a merge's placeholders)."""
        return self.reward_stats_source != UNMEASURED

    def save(self, directory: str | Path) -> Path:
        """Write atomically (temp file, fsync, rename): a calibration that fails leaves the old file intact."""
        path = Path(directory) / META_FILE
        write_text_atomic(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
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

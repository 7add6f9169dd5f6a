"""`bonsynth rm calibrate`: measure a reward model's reward mean/std on real responses and store them.

Several RMs are mixed after z-normalising each with the `reward_mean` / `reward_std` of its `bonsynth_rm.json`.
`rm train` measures them on its eval split; a merged RM has only placeholders (0 / 1, recorded as
`reward_stats_source: "unmeasured"`). Calibration scores every response of a file (any file `rm score` reads:
binary, pairwise, ranked or candidates rows) and stores the population mean/std with
`reward_stats_source: "calibrate:<sha256 of the file>"`, so a mix can tell measured stats from placeholders.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bonsynth.errors import BonsynthError, InputError
from bonsynth.rm.meta import META_FILE, RMMeta, file_sha256

CALIBRATE_PREFIX = "calibrate:"


def check_calibration_data(data: str | Path) -> Path:
    """The data file must exist before anything long (a merge) starts."""
    p = Path(data)
    if not p.exists():
        raise InputError("no such file (calibration data)", path=p)
    if not p.is_file():
        raise InputError("not a file (calibration data)", path=p)
    return p


def calibrate_reward_model(
    model_dir: str | Path,
    data: str | Path,
    *,
    fmt: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    max_length: int | None = None,
    token_budget: int | None = None,
    trust_remote_code: bool = False,
    allow_unsafe_weights: bool = False,
    label: str | Path | None = None,
) -> dict[str, Any]:
    """Score every response in `data` with the RM in `model_dir`, store mean/std in its bonsynth_rm.json.

    `label` names the model in the summary (a merge calibrates its temp directory before renaming it).
    Non-finite rewards are an error and nothing is stored: they would poison the statistics.
    """
    from bonsynth.data.normalize import check_fmt
    from bonsynth.data.readers import iter_raw_rows
    from bonsynth.modelref import resolve_model_ref
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.score_file import CHUNK_ROWS, _FileState, _score_units, _take, chunk_units
    from bonsynth.rm.train import reward_stats

    data = check_calibration_data(data)
    model_dir = Path(resolve_model_ref(str(model_dir)))
    if not model_dir.is_dir():
        raise BonsynthError(f"reward model not found: {model_dir} (calibration needs a local model directory)")
    forced = check_fmt(fmt)
    rows = iter_raw_rows(data)
    first = _take(rows, CHUNK_ROWS)  # validate the start of the data before loading the model
    if not first:
        raise InputError("no records (the input is empty)", path=data)
    rm = RewardModel.load(model_dir, device=device, dtype=dtype, max_length=max_length,
                          trust_remote_code=trust_remote_code, allow_unsafe_weights=allow_unsafe_weights)
    state = _FileState(path=str(data), forced=forced)
    rewards: list[float] = []
    chunk = first
    while chunk:
        _kind, units, _slots = chunk_units(chunk, state)
        rewards.extend(_score_units(rm, units, token_budget, state))
        chunk = _take(rows, CHUNK_ROWS)
    name = str(label if label is not None else model_dir)
    bad = sum(not math.isfinite(r) for r in rewards)
    if bad:
        raise BonsynthError(
            f"{bad} of {len(rewards)} rewards from {name} on {data} are not finite (NaN/inf); the reward model "
            f"looks broken, so no statistics were stored"
        )
    mean, std = reward_stats(rewards)
    digest = file_sha256(data)
    meta = RMMeta.load(model_dir) or RMMeta(
        objective="unknown", num_labels=rm.num_labels,
        label_mapping={"0": "reward"} if rm.num_labels == 1 else {"0": "bad", "1": "good"},
    )
    meta.reward_mean, meta.reward_std = mean, std
    meta.reward_stats_source = CALIBRATE_PREFIX + digest
    meta.extra = {**meta.extra, "calibration": {"data": str(data), "sha256": digest, "num_texts": len(rewards),
                                                "num_truncated": state.num_truncated, "max_length": rm.max_length}}
    meta.save(model_dir)
    return {
        "model": name,
        "data": str(data),
        "num_texts": len(rewards),
        "num_truncated": state.num_truncated,
        "reward_mean": mean,
        "reward_std": std,
        "reward_stats_source": meta.reward_stats_source,
        "meta_file": str(Path(name) / META_FILE),
    }

"""`bonsynth rm train --seeds 0,1,2 --average linear`: weight-averaged reward models (WARM, Ramé et al. 2024).

Members are fine-tuned from one starting point (the base with one head draw, from the run's `--seed`) with
different data orders (one seed each), on the same train/eval split, then averaged weight by weight with `bonsynth merge`'s linear method. Averaging members
that share a pre-trained base stays in one basin, so the average is usually better than each member and less
exploitable. Everything happens inside one atomic build of OUT: a run that fails anywhere (a member, the merge,
the evaluation) leaves OUT as it was. `bonsynth_rm.json` records every member's eval metrics beside the
average's, so the gain (or its absence) is on file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from bonsynth.outdir import build_dir_atomic, check_output_dir
from bonsynth.rm.meta import RMMeta

MEMBERS_DIR = "members"


def _merge_config(members: list[Path], method: str) -> Any:
    from bonsynth.merge.config import MergeConfig

    return MergeConfig(
        merge_method=method,
        models=[{"model": str(m), "parameters": {"weight": 1.0}} for m in members],
        parameters={"normalize": True},
        dtype="float32",
    )


def train_warm(cfg: Any) -> dict[str, Any]:
    """Train one member per seed, average them into OUT, measure the average on the eval split."""
    from bonsynth.merge.engine import merge_config
    from bonsynth.rm.train import train_reward_model

    start = time.perf_counter()
    out = check_output_dir(cfg.out, overwrite=cfg.overwrite, what="--out")
    with build_dir_atomic(out, overwrite=cfg.overwrite, what="--out") as work:
        members_root = work / MEMBERS_DIR
        member_summaries, member_dirs = [], []
        for seed in cfg.seeds:
            member_dir = members_root / f"seed-{seed}"
            summary = train_reward_model(_member_cfg(cfg, seed, member_dir))
            member_summaries.append({"seed": seed, **_member_metrics(summary)})
            member_dirs.append(member_dir)
        merged = work / ".average"
        merge_config(_merge_config(member_dirs, cfg.average), merged, device="cpu", random_seed=0)
        for item in merged.iterdir():
            item.rename(work / item.name)
        merged.rmdir()
        meta = RMMeta.load(work)
        assert meta is not None  # the members are RMs, so the merge writes one
        average = _measure_average(cfg, work, meta, member_dirs[0])
        if not cfg.keep_members:
            shutil.rmtree(members_root)
        meta.extra["warm"] = {
            "method": cfg.average,
            "seeds": list(cfg.seeds),
            "members": member_summaries,
            "average": average,
            "members_kept": cfg.keep_members,
            "trained_objective": cfg.objective,
        }
        meta.extra.pop("sources", None)  # the members' temp paths: meaningless once they are gone
        meta.extra.pop("config", None)
        meta.save(work)
    accs = [m.get("eval_accuracy") for m in member_summaries]
    return {
        "out": str(out),
        "objective": cfg.objective,
        "base": str(cfg.base),
        "average": cfg.average,
        "seeds": list(cfg.seeds),
        "members": member_summaries,
        "member_eval_accuracy_mean": (sum(accs) / len(accs)) if all(a is not None for a in accs) else None,
        **{f"eval_{k}": v for k, v in average.items()},
        "reward_mean": meta.reward_mean,
        "reward_std": meta.reward_std,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _member_cfg(cfg: Any, seed: int, out: Path) -> Any:
    from dataclasses import replace

    return replace(cfg.member(seed), out=out, overwrite=False)


def _member_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("eval_accuracy", "eval_loss", "train_loss", "best_step", "stopped_early", "seconds", "num_train",
            "num_eval")
    return {k: summary[k] for k in keep if k in summary}


def _measure_average(cfg: Any, work: Path, meta: RMMeta, first_member: Path) -> dict[str, Any]:
    """The average's eval metrics and reward statistics, on the members' eval split (the same records)."""
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.train import _load_data, evaluate_split, reward_stats, split_records

    member_meta = RMMeta.load(first_member)
    if member_meta is not None:
        meta.base_model = member_meta.base_model
        meta.data_hashes = member_meta.data_hashes
        meta.max_length = member_meta.max_length
    records, _hashes, _skips = _load_data(cfg)
    _train, eval_recs = split_records(records, cfg.eval_split, cfg.shared_seed)
    if not eval_recs:
        meta.reward_stats_source = "unmeasured"
        return {}
    scorer = RewardModel.load(work, device="cpu", max_length=meta.max_length, prefix_sharing="off")
    metrics, rewards = evaluate_split(scorer, cfg.objective, eval_recs, cfg.eval_batch_size)
    del scorer
    meta.reward_mean, meta.reward_std = reward_stats(rewards)
    meta.reward_stats_source = "train:eval"
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

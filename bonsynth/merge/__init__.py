"""`bonsynth merge`: mergekit-compatible model merging, streamed, with reward-model heads handled.

    bonsynth merge CONFIG.yml OUT_DIR [--device cpu|cuda] [--random-seed N] [--out-shard-size 5B] [--dtype D]

The YAML is mergekit's schema (see `bonsynth.merge.config`) for passthrough slices, linear, slerp,
task_arithmetic, ties, dare_ties and dare_linear; the arithmetic matches mergekit 0.1.5 (see
`bonsynth.merge.methods`, which also lists every deliberate difference). Reward models merge into one scalar
reward head (see `bonsynth.merge.heads`): mergekit drops `score.weight` or fails there.

Modules: `config` (pydantic schema = the YAML), `methods` (registry of merge methods), `io` (mmap reader,
sharded writer), `heads` (names across architectures, reward heads), `engine` (plan, then stream).
"""

from __future__ import annotations

from bonsynth.merge.engine import MergeOptions, merge_config, run_merge

__all__ = ["MergeOptions", "merge_config", "run_merge"]

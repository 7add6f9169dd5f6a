"""Reward models: the scoring engine (`RewardModel`), its metadata, and scoring files.

Heavy imports (torch, transformers) happen lazily, so importing `bonsynth.rm` stays cheap.
"""

from __future__ import annotations

from bonsynth.rm.meta import META_FILE, RMMeta

__all__ = ["META_FILE", "RMMeta", "RewardModel", "score_file"]


def __getattr__(name: str):
    if name == "RewardModel":
        from bonsynth.rm.model import RewardModel

        return RewardModel
    if name == "score_file":
        from bonsynth.rm.score_file import score_file

        return score_file
    raise AttributeError(name)

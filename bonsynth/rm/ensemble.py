"""Several reward models as one scorer.

With one RM the reward is its raw scalar. With several, each is z-normalised with the mean and std stored
in its `bonsynth_rm.json` (measured on its eval split), then combined as a weighted sum, so RMs on different
scales mix as the weights say.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from bonsynth.errors import ConfigError
from bonsynth.rm.meta import UNMEASURED

log = logging.getLogger(__name__)


@dataclass
class EnsembleScores:
    combined: list[float]
    per_model: dict[str, list[float]]  # raw rewards per RM name


class RewardEnsemble:
    def __init__(self, models: Sequence, names: Sequence[str], weights: Sequence[float] | None = None) -> None:
        if not models:
            raise ConfigError("at least one reward model is needed (--reward)")
        if weights is None:
            weights = [1.0 / len(models)] * len(models)
        if len(weights) != len(models):
            raise ConfigError(f"--reward-weights has {len(weights)} values for {len(models)} reward models")
        if len(set(names)) != len(names):
            raise ConfigError("two reward models share a name; pass distinct paths")
        self.models = list(models)
        self.names = list(names)
        self.weights = [float(w) for w in weights]
        if len(self.models) > 1:
            for name, rm in zip(self.names, self.models, strict=True):
                if getattr(getattr(rm, "meta", None), "reward_stats_source", None) == UNMEASURED:
                    log.warning("warning: reward model %s has unmeasured reward_mean/std (placeholders 0 / 1, e.g. a "
                                "merge), so its z-normalised share of the mix is off; run `bonsynth rm calibrate` "
                                "on it first", name)

    @classmethod
    def load(
        cls, paths: Sequence[str], weights: Sequence[float] | None = None, *, engine: str = "hf", **load_kw
    ) -> RewardEnsemble:
        """Load each RM with our scoring engine (`hf`) or vLLM's pooling runner (`vllm`).

        `load_kw` are `RewardModel.load` keywords; vLLM takes the ones it shares (dtype, max_length and the
        loading safety options) and ignores the engine-specific rest (device, token_budget, prefix_sharing).
        """
        if engine == "vllm":
            from bonsynth.rm.vllm_scorer import VLLMRewardScorer

            shared = ("dtype", "max_length", "trust_remote_code", "allow_unsafe_weights")
            kw = {k: load_kw[k] for k in shared if k in load_kw}
            models = [VLLMRewardScorer(p, **kw) for p in paths]
        elif engine == "hf":
            from bonsynth.rm.model import RewardModel

            models = [RewardModel.load(p, **load_kw) for p in paths]
        else:
            raise ConfigError(f"unknown reward engine {engine!r}; use hf or vllm")
        return cls(models, names=_short_names(paths), weights=weights)

    def close(self) -> None:
        for m in self.models:
            if hasattr(m, "close"):
                m.close()

    def score(self, prompts: Sequence, responses: Sequence[str]) -> EnsembleScores:
        items = list(zip(prompts, responses, strict=True))
        per: dict[str, list[float]] = {}
        for name, rm in zip(self.names, self.models, strict=True):
            per[name] = [float(x) for x in rm.score(items)]
        if len(self.models) == 1:
            return EnsembleScores(combined=list(per[self.names[0]]), per_model=per)
        combined = [0.0] * len(items)
        for name, rm, w in zip(self.names, self.models, self.weights, strict=True):
            mean, std = rm.meta.reward_mean, rm.meta.reward_std or 1.0
            for i, r in enumerate(per[name]):
                combined[i] += w * (r - mean) / std
        return EnsembleScores(combined=combined, per_model=per)

    def describe(self) -> list[dict]:
        """Per RM, for the manifest: name, weight, normalisation, and how it ran (dtype, device, engine, ...)."""
        out = []
        for name, rm, w in zip(self.names, self.models, self.weights, strict=True):
            meta = rm.meta
            # The scorer's own settings; the manifest takes the path from the model's fingerprint.
            own = rm.describe() if callable(getattr(rm, "describe", None)) else {}
            settings = {k: v for k, v in own.items() if k != "path"}
            out.append({**settings, "name": name, "weight": w, "objective": meta.objective,
                        "reward_mean": meta.reward_mean, "reward_std": meta.reward_std})
        return out


def _short_names(paths: Sequence[str]) -> list[str]:
    """Readable, unique names for RMs (the last path component, prefixed with its index on clashes)."""
    from pathlib import PurePath

    base = [PurePath(p.rstrip("/")).name or p for p in paths]
    if len(set(base)) == len(base):
        return base
    return [f"{i}:{b}" for i, b in enumerate(base)]

"""bonsynth: best-of-N synthetic data.

Pipeline: data -> rm (slice, train, eval, score) -> merge -> generate -> score -> select -> write -> loop.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["BestOfN", "RewardModel", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import bonsynth` (and `bonsynth --help`) does not pay for importing torch.
    if name == "RewardModel":
        from bonsynth.rm.model import RewardModel

        return RewardModel
    if name == "BestOfN":
        from bonsynth.generate.api import BestOfN

        return BestOfN
    raise AttributeError(name)

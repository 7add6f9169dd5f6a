"""`bonsynth loop`: rounds of best-of-N data -> policy update (SFT or DPO) -> eval, from a YAML recipe."""

from __future__ import annotations

from bonsynth.loop.recipe import LoopRecipe, load_recipe
from bonsynth.loop.runner import run_loop

__all__ = ["LoopRecipe", "load_recipe", "run_loop"]

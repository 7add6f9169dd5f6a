"""Where a loop's models and prompts come from: `demo:` names, existence checks, the eval hold-out, the
prompts of each round.

Everything here runs before the loop directory is touched, so a recipe naming a missing file fails with
one clear line and leaves nothing behind.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from bonsynth.data.records import PromptRecord
from bonsynth.errors import BonsynthError, ConfigError
from bonsynth.generate.seeding import prompt_seed
from bonsynth.loop.recipe import LoopRecipe
from bonsynth.modelref import resolve_model_ref


def derive_seed(seed: int, *parts: object) -> int:
    """A 31-bit seed for one purpose of one round (`derive_seed(s, "round", 2)`), reproducible anywhere."""
    return prompt_seed(seed, "/".join(str(p) for p in parts), salt="loop")


def resolve_path(value: str, *, build_demo: bool = True) -> str:
    """`demo:` names (models and `demo:data/F`) through the one resolver every model path goes through."""
    return resolve_model_ref(value, build_demo=build_demo)


UNSAFE_OPT_IN = "set allow_unsafe_weights: true in the recipe"


def check_model(value: str, key: str, what: str, *, allow_unsafe_weights: bool = False) -> str:
    """Resolve and check one model of the recipe (pickle-only weights refused unless the recipe opts in)."""
    from bonsynth.models import check_model_source

    try:
        return check_model_source(resolve_path(value), what=what, allow_unsafe_weights=allow_unsafe_weights,
                                  opt_in=UNSAFE_OPT_IN)
    except BonsynthError as e:
        raise ConfigError(f"{key}: {e}") from None


@dataclass
class ResolvedSources:
    policy: str
    rewards: list[str]
    eval_rewards: list[str]
    labeler: str | None
    pool: list[PromptRecord]  # prompts the rounds train on (from files; empty when every prompt is synthetic)
    eval_prompts: list[PromptRecord]
    synth_seeds: str | None = None  # the `synth` item's seeds file, resolved
    synth_model: str | None = None  # its fixed model, resolved (None: the round's policy)


def _load_many(paths: list[str], key: str, fmt: str) -> list[PromptRecord]:
    from bonsynth.data.readers import load_prompts

    records: list[PromptRecord] = []
    seen: dict[str, str] = {}
    for raw in paths:
        path = resolve_path(raw)
        try:
            recs = load_prompts(path, fmt=fmt)
        except BonsynthError as e:
            raise ConfigError(f"{key}: {e}") from None
        for r in recs:
            if r.id in seen:
                raise ConfigError(f"{key}: prompt id {r.id!r} appears in both {seen[r.id]} and {path}; ids must be unique")
            seen[r.id] = path
        records.extend(recs)
    if not records:
        raise ConfigError(f"{key}: no prompts")
    return records


def resolve_sources(recipe: LoopRecipe, source: str) -> ResolvedSources:
    """Check every model and data path of the recipe and load the prompts; errors name the recipe key."""
    unsafe = recipe.allow_unsafe_weights
    try:
        policy = check_model(recipe.policy, "policy", "policy", allow_unsafe_weights=unsafe)
        rewards = [check_model(r, f"rewards[{i}]", "reward model", allow_unsafe_weights=unsafe)
                   for i, r in enumerate(recipe.rewards)]
        ev = recipe.eval
        eval_rewards = (
            [check_model(r, f"eval.rewards[{i}]", "reward model", allow_unsafe_weights=unsafe)
             for i, r in enumerate(ev.rewards)]
            if ev.rewards else list(rewards)
        )
        labeler = check_model(recipe.rm_update.labeler, "rm_update.labeler", "labelling reward model",
                              allow_unsafe_weights=unsafe) if recipe.rm_update else None
        files = recipe.prompt_files
        pool = _load_many(files, "prompts", recipe.prompt_format) if files else []
        synth_seeds, synth_model = _synth_sources(recipe, unsafe)
        if ev.prompts:
            eval_prompts = _load_many(ev.prompts, "eval.prompts", recipe.prompt_format)
            if ev.num_prompts is not None:
                eval_prompts = eval_prompts[: ev.num_prompts]
            held = {r.id for r in eval_prompts}
            pool = [r for r in pool if r.id not in held]  # never train on an eval prompt
            if files and not pool:
                raise ConfigError("prompts: every prompt is also an eval prompt; nothing is left to train on")
        else:
            k = ev.num_prompts or 32
            if k >= len(pool):
                raise ConfigError(f"eval.num_prompts: {k} eval prompts would leave none of the {len(pool)} prompts to "
                                  "train on; lower it or give eval.prompts")
            order = list(range(len(pool)))
            random.Random(derive_seed(recipe.seed, "eval-holdout")).shuffle(order)
            held_idx = set(order[:k])
            eval_prompts = [pool[i] for i in sorted(held_idx)]
            pool = [r for i, r in enumerate(pool) if i not in held_idx]
        ppr = recipe.prompts_per_round
        if files and isinstance(ppr, int) and ppr > len(pool):
            raise ConfigError(f"prompts_per_round: {ppr} is more than the {len(pool)} training prompts "
                              f"(after holding out {len(eval_prompts)} eval prompts)")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return ResolvedSources(policy, rewards, eval_rewards, labeler, pool, eval_prompts, synth_seeds, synth_model)


def _synth_sources(recipe: LoopRecipe, unsafe: bool) -> tuple[str | None, str | None]:
    """The `synth` item's seeds file and fixed model, checked before anything runs."""
    syn = recipe.prompt_synth
    if syn is None:
        return None, None
    key = f"prompts[{next(i for i, p in enumerate(recipe.prompts) if not isinstance(p, str))}].synth"
    seeds = resolve_path(syn.seeds)
    if not Path(seeds).is_file():
        raise ConfigError(f"{key}.seeds: no such file: {syn.seeds}")
    if syn.template is not None and not Path(syn.template).is_file():
        raise ConfigError(f"{key}.template: no such file: {syn.template}")
    model = None if syn.model == "policy" else check_model(syn.model, f"{key}.model", "prompt synthesis model",
                                                           allow_unsafe_weights=unsafe)
    return seeds, model


def round_prompts(pool: list[PromptRecord], per_round: int | str, seed: int, round_index: int) -> list[PromptRecord]:
    """The prompts of one round: all of them, or the next fresh slice of seeded passes over the pool.

    Rounds take consecutive slices of a stream of shuffled passes, so no prompt repeats until the pool is used
    up; the slice of round r depends only on the seed and r, never on how many rounds ran before.
    """
    if per_round == "all":
        return list(pool)
    k = int(per_round)
    start, stop = round_index * k, (round_index + 1) * k
    out: list[PromptRecord] = []
    n = len(pool)
    for pass_index in range(start // n, (stop - 1) // n + 1):
        order = list(range(n))
        random.Random(derive_seed(seed, "prompts-pass", pass_index)).shuffle(order)
        lo, hi = max(start, pass_index * n), min(stop, (pass_index + 1) * n)
        out.extend(pool[order[i - pass_index * n]] for i in range(lo, hi))
    return out


def prompt_row(rec: PromptRecord) -> dict:
    return {"id": rec.id, "messages": rec.prompt} if rec.is_chat else {"id": rec.id, "prompt": rec.prompt}


def write_prompts(path: Path, records: list[PromptRecord]) -> None:
    """Write a prompts file once (atomically); an existing one is kept, so nothing a round wrote is replaced."""
    if path.exists():
        return
    from bonsynth.generate.outputs import row_bytes

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(row_bytes(prompt_row(r) for r in records))
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]

"""The one best-of-N step: a batch of prompts -> N candidates each -> rewards -> selection -> rows.

Every engine runs this same step: `bonsynth generate` batch by batch, `BestOfN`, the Ray actors (which split
it into its generate and score halves across actor pools) and the server. A new feature of the step (a new
way to sample, to score, to select) is added here once and every engine has it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from bonsynth.data.records import PromptRecord
from bonsynth.generate import outputs
from bonsynth.generate.backends.base import GenerationBackend, GenerationResult, SamplingConfig
from bonsynth.select.selection import SelectionConfig, select_candidates


@runtime_checkable
class Scorer(Protocol):
    """What the step needs from a reward engine (`RewardEnsemble` is the one bonsynth builds).

    `score` returns an object with `combined` (one reward per response) and `per_model` (raw rewards per RM
    name), in the order of its inputs.
    """

    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> Any: ...

    def describe(self) -> list[dict]: ...

    def close(self) -> None: ...


def flatten(batch: Sequence[PromptRecord], results: Sequence[GenerationResult]) -> tuple[list, list[str]]:
    """(prompt, candidate text) lists, candidate by candidate, in the order the rewards come back."""
    prompts = [rec.prompt for rec, res in zip(batch, results, strict=True) for _ in res.completions]
    texts = [c.text for res in results for c in res.completions]
    return prompts, texts


def score_results(scorer: Scorer, batch: Sequence[PromptRecord], results: Sequence[GenerationResult]) -> Any:
    """All candidates of a batch in one scorer call (one call lets the RM engine batch across prompts)."""
    prompts, texts = flatten(batch, results)
    return scorer.score(prompts, texts)


def best_of_n_step(
    batch: list[PromptRecord],
    backend: GenerationBackend,
    scorer: Scorer,
    sampling: SamplingConfig,
    selection: SelectionConfig,
) -> dict[str, list[dict]]:
    """Generate, score and select one batch; returns the rows of candidates/sft/dpo.jsonl."""
    results = backend.generate(batch, sampling)
    scores = score_results(scorer, batch, results)
    return build_rows(batch, results, scores.combined, scores.per_model, selection)


def finite_or_none(x: float) -> float | None:
    """A reward as written to disk: strict JSON has no NaN or Infinity, so a non-finite reward is `null`."""
    return x if math.isfinite(x) else None


def build_rows(
    batch: list[PromptRecord],
    results: list[GenerationResult],
    rewards: list[float],
    per_model: dict[str, list[float]],
    selection: SelectionConfig,
) -> dict[str, list[dict]]:
    """Turn one batch's generations and rewards into rows for the three data files."""
    rows: dict[str, list[dict]] = {name: [] for name in outputs.DATA_FILES}
    k = 0
    for rec, res in zip(batch, results, strict=True):
        comps = res.completions
        r = [float(x) for x in rewards[k : k + len(comps)]]
        per = {name: vals[k : k + len(comps)] for name, vals in per_model.items()}
        k += len(comps)
        texts = [c.text for c in comps]
        sel = select_candidates(texts, r, [c.num_tokens for c in comps], selection)
        dup = set(sel.duplicates)
        cand_rows = []
        for i, c in enumerate(comps):
            cand_rows.append({
                "index": i,
                "text": c.text,
                "reward": finite_or_none(r[i]),
                "rewards": {name: finite_or_none(float(vals[i])) for name, vals in per.items()},
                "finish_reason": c.finish_reason,
                "num_tokens": c.num_tokens,
                "duplicate": i in dup,
            })
        row = {
            "id": rec.id,
            "prompt": rec.prompt,
            "prompt_tokens": res.prompt_tokens,
            "prompt_truncated": res.prompt_truncated,
            "skipped": res.skipped,
            "candidates": cand_rows,
            "selected": sel.selected,
            "pair": list(sel.pair) if sel.pair else None,
            "pair_skipped": sel.skipped_pair_reason,
            "below_min_reward": sel.below_min_reward,
        }
        if sel.nonfinite:
            row["nonfinite_rewards"] = len(sel.nonfinite)
        rows[outputs.CANDIDATES].append(row)
        for i in sel.selected:
            rows[outputs.SFT].append(outputs.sft_row(rec, texts[i], r[i]))
        if sel.pair:
            c, j = sel.pair
            rows[outputs.DPO].append(outputs.dpo_row(rec, texts[c], texts[j], r[c], r[j]))
    return rows



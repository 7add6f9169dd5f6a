"""The gold judge inside the loop: each eval run re-scored by `eval.judge`, and the control arm's data.

The proxy RM that selects always looks better round over round (the policy is trained towards it); only a
judge that did not select can say whether quality rose. Scoring reuses `bonsynth judge` as it is: its loader
(`load_judge`, RM directories weighted and z-normalised as `generate --reward-weights`) and `judge_run`, which
also writes the within-round best-of-n report (`judge.json`) of each eval run. The per-candidate judge scores
that `judge_run` computes are kept (by wrapping the scorer) and written to `gold.jsonl` beside the run, so the
loop's per-prompt comparisons are recomputable from files.

Comparisons across rounds are per prompt (the eval prompts are the same every round): the gold win rate of
arm A against arm B on one prompt is the probability that a uniformly random eval candidate of A gets a higher
judge score than a uniformly random one of B, ties counting half (all N x N candidate pairs). The reported win
rate is its mean over the prompts both runs scored, with a percentile bootstrap CI over prompts
(`bonsynth.judge.estimator.bootstrap_ci`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bonsynth.errors import ConfigError
from bonsynth.generate.outputs import write_json_atomic
from bonsynth.judge.estimator import bootstrap_ci
from bonsynth.loop.recipe import LoopRecipe

GOLD_FILE = "gold.jsonl"
BOOTSTRAP = 2000


def resolve_judge(recipe: LoopRecipe, source: str) -> list[str] | None:
    """The judge paths (`demo:` names resolved, each checked as `rewards` are), or None without `eval.judge`."""
    from bonsynth.loop.sources import check_model

    if not recipe.eval.judge:
        return None
    try:
        return [check_model(j, f"eval.judge[{i}]", "judge reward model",
                            allow_unsafe_weights=recipe.allow_unsafe_weights) for i, j in enumerate(recipe.eval.judge)]
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


# ---------------------------------------------------------------------------------------------- same files


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))


def _digest(path: Path) -> str | None:
    h = hashlib.sha256()
    files = _weight_files(path)
    if not files:
        return None
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def same_model_files(a: str, b: str) -> bool:
    """Whether two model references are the same files: the same resolved path, or identical weight files
    (hashed only when their sizes agree, so distinct large models cost a stat, not a read)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if not (pa.exists() and pb.exists()):
        return a == b  # hub ids: the same name is the same model
    pa, pb = pa.resolve(), pb.resolve()
    if pa == pb:
        return True
    fa, fb = _weight_files(pa), _weight_files(pb)
    if not fa or [f.stat().st_size for f in fa] != [f.stat().st_size for f in fb]:
        return False
    return _digest(pa) == _digest(pb)


def judge_overlap_warnings(judge: Sequence[str], models: dict[str, Sequence[str]]) -> list[str]:
    """One warning per (judge model, recipe RM) pair that are the same files: gold then measures the proxy."""
    out = []
    for j in judge:
        for key, paths in models.items():
            for p in paths:
                if same_model_files(j, p):
                    out.append(f"the judge {j} is the same model files as {key} ({p}): its gold scores are proxy "
                               "scores, so gold cannot show over-optimisation; judge with an independent model")
    return out


# ---------------------------------------------------------------------------------------------- scoring


class _Recorder:
    """Wraps the judge scorer `judge_run` calls, keeping every score in call order."""

    def __init__(self, scorer) -> None:
        self.scorer = scorer
        self.texts: list[str] = []
        self.scores: list[float] = []

    def score(self, prompts, texts):
        res = self.scorer.score(prompts, texts)
        self.texts.extend(texts)
        self.scores.extend(float(x) for x in res.combined)
        return res

    def describe(self):
        return self.scorer.describe() if callable(getattr(self.scorer, "describe", None)) else []


def judge_eval_run(run_dir: Path, judge: list[str], weights: list[float] | None, recipe: LoopRecipe, *,
                   seed: int, scorer=None) -> dict:
    """Score an eval run with the judge: writes `judge.json` (bonsynth judge's report) and `gold.jsonl`
    (per prompt id: candidate indices and judge scores, null where the judge had none); returns the report."""
    from bonsynth.generate import outputs
    from bonsynth.judge import run as jr

    g = recipe.generation
    cfg = jr.JudgeConfig(run_dir=str(run_dir), judges=list(judge), judge_weights=weights, device=recipe.device,
                      dtype=g.reward_dtype or recipe.dtype, prefix_sharing=g.prefix_sharing,
                      trust_remote_code=recipe.trust_remote_code, allow_unsafe_weights=recipe.allow_unsafe_weights,
                      bootstrap=BOOTSTRAP, seed=seed)
    own = scorer is None
    scorer = jr.load_judge(cfg) if own else scorer
    rec = _Recorder(scorer)
    try:
        report = jr.judge_run(cfg, scorer=rec)
    finally:
        if own and hasattr(scorer, "close"):
            scorer.close()
    # judge_run scores, in file order, each usable prompt's candidates with a finite proxy key: map them back.
    length_normalize = bool(json.loads((run_dir / outputs.MANIFEST).read_text())["config"].get("length_normalize"))
    rows, k = [], 0
    for _, row in jr.iter_candidate_rows(run_dir / outputs.CANDIDATES):
        cands = row["candidates"]
        gold: list[float | None] = [None] * len(cands)
        if not row.get("skipped") and cands:
            for i, key in enumerate(jr.proxy_keys(cands, length_normalize)):
                if key is not None and math.isfinite(key):
                    if rec.texts[k] != cands[i]["text"]:
                        raise RuntimeError(f"judge scores out of step with {run_dir / outputs.CANDIDATES}")
                    x = rec.scores[k]
                    gold[i] = x if math.isfinite(x) else None
                    k += 1
        rows.append({"id": row.get("id"), "index": [c.get("index", i) for i, c in enumerate(cands)], "gold": gold})
    if k != len(rec.scores):
        raise RuntimeError(f"judge scored {len(rec.scores)} candidates of {run_dir}, matched {k}")
    tmp = run_dir / (GOLD_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(run_dir / GOLD_FILE)
    report.pop("timings", None)  # a redone eval stage then writes the very same file
    write_json_atomic(run_dir / jr.JUDGE_JSON, report)
    return report


def read_gold(run_dir: Path) -> dict[str, list[float]]:
    """Per prompt id: its candidates' finite judge scores."""
    out = {}
    with open(run_dir / GOLD_FILE, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                vals = [float(x) for x in r["gold"] if x is not None]
                if vals:
                    out[str(r["id"])] = vals
    return out


# ---------------------------------------------------------------------------------------------- metrics


def pair_win(a: Sequence[float], b: Sequence[float]) -> float:
    """P(a random candidate of `a` beats a random one of `b`) under the judge, ties half."""
    x = np.asarray(a, dtype=np.float64)[:, None]
    y = np.asarray(b, dtype=np.float64)[None, :]
    return float(np.mean((x > y) + 0.5 * (x == y)))


def win_rate(cur: dict[str, list[float]], other: dict[str, list[float]], *, seed: int) -> dict:
    """Mean per-prompt gold win rate of `cur` over `other` on their shared prompts, with a 95% bootstrap CI."""
    ids = sorted(set(cur) & set(other))
    per = [pair_win(cur[i], other[i]) for i in ids]
    ci = bootstrap_ci(per, resamples=BOOTSTRAP, seed=seed)
    return {"win_rate": float(np.mean(per)) if per else None, "ci95": list(ci) if ci else None, "prompts": len(ids)}


def gold_metrics(run_dir: Path, *, previous: Path | None, base: Path | None, seed: int,
                 extra: dict[str, Path] | None = None) -> dict:
    """Gold mean of the run's eval samples, and its per-prompt win rates against the previous round's and the
    base policy's eval runs (and any `extra` runs, by name)."""
    cur = read_gold(run_dir)
    vals = [x for v in cur.values() for x in v]
    m: dict = {
        "gold_mean": float(np.mean(vals)) if vals else None,
        "gold_prompt_mean": float(np.mean([np.mean(v) for v in cur.values()])) if cur else None,
        "gold_samples": len(vals),
        "gold_prompts": len(cur),
    }
    for name, other in (("previous", previous), ("base", base), *(extra or {}).items()):
        wr = win_rate(cur, read_gold(other), seed=seed) if other is not None else None
        m[f"gold_win_rate_vs_{name}"] = wr["win_rate"] if wr else None
        m[f"gold_win_rate_vs_{name}_ci95"] = wr["ci95"] if wr else None
    return m


# ---------------------------------------------------------------------------------------------- control arm


def control_pick(seed: int, r: int, prompt_id: str, n: int) -> int:
    """The control arm's candidate for one prompt of round r: uniform, reproducible from seed, round and id."""
    from bonsynth.loop.sources import derive_seed

    return derive_seed(seed, "control", r, prompt_id) % n


def write_control_data(gen_dir: Path, out_dir: Path, *, seed: int, r: int, method: str) -> dict:
    """The control arm's training data from the round's candidates: per prompt one uniformly random candidate
    (sft.jsonl), or for dpo a random ordered pair of two distinct ones (dpo.jsonl); the main arm's
    skipped prompts are skipped here too. Returns counts."""
    from bonsynth.generate.outputs import row_bytes
    from bonsynth.loop.sources import read_jsonl

    out_dir.mkdir(parents=True, exist_ok=True)
    sft, dpo = [], []
    for row in read_jsonl(gen_dir / "candidates.jsonl"):
        # finished candidates only: a pruned one (`generation.prune_*`) is a partial reply, never training data
        cands = [c for c in row["candidates"] if c.get("reward") is not None and c.get("pruned_at") is None]
        if row.get("skipped") or not cands:
            continue
        pid = str(row.get("id"))
        i = control_pick(seed, r, pid, len(cands))
        prompt = row["prompt"]
        if method == "sft":
            text = cands[i]["text"]
            if isinstance(prompt, list):
                sft.append({"id": pid, "messages": [*prompt, {"role": "assistant", "content": text}]})
            else:
                sft.append({"id": pid, "prompt": prompt, "completion": text})
        elif len(cands) >= 2:
            j = (i + 1 + control_pick(seed, r, pid + "/rejected", len(cands) - 1)) % len(cands)
            dpo.append({"id": pid, "prompt": prompt, "chosen": cands[i]["text"], "rejected": cands[j]["text"]})
    name, rows = ("sft.jsonl", sft) if method == "sft" else ("dpo.jsonl", dpo)
    tmp = out_dir / (name + ".tmp")
    tmp.write_bytes(row_bytes(rows))
    tmp.replace(out_dir / name)
    return {"rows": len(rows), "method": method}

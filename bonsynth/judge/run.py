"""`bonsynth judge`: re-score a finished `generate` run with a gold judge and measure what best-of-n bought.

Best-of-N always raises the mean reward of the RM that picks (the max of n beats the mean), so a run's own
`bon_gain` says nothing about quality. Here every candidate is scored once more by a judge that did not
select (RM directories, weighted and z-normalised exactly as `generate --reward/--reward-weights`), and the
exact best-of-n expectation (`bonsynth.judge.estimator`) is computed for n = 1, 2, 4, ..., N under both the
proxy and the judge, as in Gao et al. 2022: a gold curve that rises, then flattens or falls.

Candidates whose proxy reward is null (NaN/inf; never selected) or whose judge score is non-finite are left
out and counted; skipped prompts are left out and counted. A prompt with fewer scored candidates than n uses
all of them for that n.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bonsynth.errors import InputError
from bonsynth.generate import outputs
from bonsynth.judge import estimator
from bonsynth.settings import (
    PREFIX_SHARING_HELP,
    PREFIX_SHARING_MODES,
    UNSAFE_WEIGHTS_HELP,
    FieldError,
    check_declared,
    comma_list,
    setting,
)

JUDGE_JSON = "judge.json"
JUDGE_MD = "judge.md"
JUDGE_PNG = "judge.png"
SCORE_CHUNK = 8192  # candidates per scoring call: bounded memory, whole prompts per chunk (prefix sharing)


_JUDGE_HELP = ("Judge: a reward model directory (not the RM that selected; repeat for several), or openai:MODEL for an "
               "LLM judge on an OpenAI-compatible server.")


@dataclass
class JudgeConfig:
    """What `bonsynth judge` (and `generate --judge`, and a loop's gold judge) runs with, checked when built.
    Its fields are the command's options (`bonsynth.settings`); a bad value is a `FieldError` naming the field
    (the CLI names the flag)."""

    run_dir: str = setting(cli=False)  # the command's RUN_DIR argument
    judges: list[str] = setting(flag="--judge", multiple=True, help=_JUDGE_HELP)
    judge_weights: list[float] | None = setting(
        None, parse=comma_list(float, "numbers", "0.7,0.3"),
        help="Comma-separated weights for several judges, z-normalised as generate's --reward-weights.")
    out: str | None = setting(None, type=str, metavar="PATH", help="Report directory (default: RUN_DIR).")
    bootstrap: int = setting(2000, ge=100, help="Bootstrap resamples for the win-rate CI.")
    seed: int = setting(0, help="Bootstrap seed.")
    device: str = setting("auto")
    dtype: str = setting("auto", help="auto = bf16 on GPU, fp32 on CPU.")
    prefix_sharing: str | bool = setting("auto", choices=PREFIX_SHARING_MODES, help=PREFIX_SHARING_HELP)
    trust_remote_code: bool = setting(False, negatable=True, help="Run Python code shipped in the judge model directories.")
    allow_unsafe_weights: bool = setting(False, help=UNSAFE_WEIGHTS_HELP)
    # LLM judges (`openai:MODEL`) only:
    judge_mode: str = setting("pointwise", choices=("pointwise", "pairwise"),
                              help="openai judge: score each candidate (1-10), or compare the proxy's pick with each "
                                   "other candidate.")
    judge_prompt: str | None = setting(None, type=str, metavar="FILE",
                                       help="openai judge: prompt template file ({prompt} and {response}, or "
                                            "{response_a} and {response_b} for pairwise); default: the one shipped "
                                            "with bonsynth.")
    base_url: str | None = setting(None, type=str, help="openai judge: server (default: $BONSYNTH_OPENAI_BASE_URL or "
                                                        "$OPENAI_BASE_URL); key from $OPENAI_API_KEY.")
    concurrency: int = setting(8, ge=1, help="openai judge: requests in flight.")
    judge_max_tokens: int = setting(16, ge=1, help="openai judge: tokens per answer.")
    backend_options: dict = setting(default_factory=dict, cli=False)  # more OpenAIBackend keywords (timeouts, retries)

    def __post_init__(self) -> None:
        self.check()

    @property
    def llm(self) -> bool:
        from bonsynth.judge.llm import is_llm_judge

        return any(is_llm_judge(j) for j in self.judges)

    def check(self) -> None:
        """Every field, checked when the config is built (`FieldError`: the library names the field, the CLI
        its flag)."""
        if not self.judges:
            raise FieldError("at least one `judges` model is needed")
        if self.judge_weights is not None:
            if len(self.judges) == 1:
                raise FieldError("`judge_weights` needs two or more `judges` models; drop `judge_weights`")
            if len(self.judge_weights) != len(self.judges):
                raise FieldError(f"`judge_weights` has {len(self.judge_weights)} values for {len(self.judges)} "
                                 "`judges` models")
            if not all(math.isfinite(w) for w in self.judge_weights):
                raise FieldError(f"`judge_weights` must be finite numbers (got {self.judge_weights})")
        check_declared(self)  # choices and bounds, as each field declares them
        if self.llm and len(self.judges) > 1:
            raise FieldError("an openai:MODEL judge is used on its own: pass it as the only `judges` model")
        if not self.llm:
            given = [f"`{name}`" for name, v in (("judge_mode", self.judge_mode != "pointwise"),
                                                 ("judge_prompt", self.judge_prompt), ("base_url", self.base_url)) if v]
            if given:
                raise FieldError(f"{', '.join(given)} only apply to an openai:MODEL judge")

    def validate(self) -> None:
        """The checks again, for a config whose fields were changed after it was built."""
        self.check()


def read_run(run_dir: str | Path) -> dict:
    """The run's manifest, after checking the directory holds a finished `generate` run (one line if not)."""
    d = Path(run_dir)
    if not d.is_dir():
        raise InputError("not a directory (expected the --out of a finished `bonsynth generate`)", path=d)
    cands = d / outputs.CANDIDATES
    if not cands.is_file():
        raise InputError(f"no {outputs.CANDIDATES}: not a bonsynth generate run", path=d)
    state_path = d / outputs.STATE
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError("damaged run state (not valid JSON)", path=state_path) from None
        if isinstance(state, dict) and not state.get("complete"):
            raise InputError("the run is not finished (state.json says incomplete); finish it with "
                             "`bonsynth generate ... --resume` first", path=d)
    man_path = d / outputs.MANIFEST
    if not man_path.is_file():
        raise InputError(f"no {outputs.MANIFEST}: the run is not finished (resume it first)", path=d)
    try:
        manifest = json.loads(man_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({getattr(e, 'msg', e)})", path=man_path) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        raise InputError("not a bonsynth manifest", path=man_path, field="config")
    n = manifest["config"].get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError("not a positive integer", path=man_path, field="config.n")
    return manifest


def iter_candidate_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) of candidates.jsonl, each checked for what the judge reads; one line on a bad row."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON ({e.msg})", path=path, line=lineno) from None
            if not isinstance(row, dict):
                raise InputError("not a JSON object", path=path, line=lineno)
            for key in ("prompt", "candidates"):
                if key not in row:
                    raise InputError("missing", path=path, line=lineno, field=key)
            if not isinstance(row["candidates"], list):
                raise InputError("not a list", path=path, line=lineno, field="candidates")
            for i, c in enumerate(row["candidates"]):
                if not isinstance(c, dict) or not isinstance(c.get("text"), str):
                    raise InputError("missing or not a string", path=path, line=lineno, field=f"candidates[{i}].text")
                r = c.get("reward")
                if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float))):
                    raise InputError("not a number or null", path=path, line=lineno, field=f"candidates[{i}].reward")
            yield lineno, row


def proxy_keys(cands: list[dict], length_normalize: bool) -> list[float | None]:
    """The proxy's ranking score per candidate, as selection ranks (None for a null reward)."""
    from bonsynth.select.selection import ranking_scores

    keys: list[float | None] = []
    for c in cands:
        r = c.get("reward")
        if r is None:
            keys.append(None)
        else:
            keys.append(ranking_scores([float(r)], [int(c.get("num_tokens") or 0)], length_normalize)[0])
    return keys


def usable_prompts(path: Path, length_normalize: bool, counts: dict) -> Iterator[tuple[dict, list[tuple[int, float]]]]:
    """Each prompt row with its candidates that have a finite proxy key, as (index, key); skipped prompts,
    null proxy rewards and prompts left with nothing are counted into `counts`, never judged."""
    for _, row in iter_candidate_rows(path):
        counts["prompts"] += 1
        cands = row["candidates"]
        counts["candidates"] += len(cands)
        if row.get("skipped") or not cands:
            counts["prompts_skipped"] += 1
            continue
        keys = proxy_keys(cands, length_normalize)
        # a pruned candidate (generate --prune-at/--prune-keep) is a partial reply, not a sample: never judged
        unpruned = [i for i, c in enumerate(cands) if c.get("pruned_at") is None]
        if len(unpruned) < len(cands):
            counts["pruned"] = counts.get("pruned", 0) + len(cands) - len(unpruned)
        kept = [(i, keys[i]) for i in unpruned if keys[i] is not None and math.isfinite(keys[i])]
        counts["null_proxy_reward"] += len(unpruned) - len(kept)
        if not kept:
            counts["prompts_without_scored_candidates"] += 1
            continue
        yield row, kept


def check_judge_sources(cfg: JudgeConfig) -> None:
    """Fail fast, before any model loads: a missing judge directory, pickle-only weights, a bad template."""
    from bonsynth.models import check_model_source

    if cfg.llm:
        from bonsynth.judge.llm import load_template

        load_template(cfg.judge_mode, cfg.judge_prompt)
        return
    for path in cfg.judges:
        check_model_source(path, what="judge reward model", allow_unsafe_weights=cfg.allow_unsafe_weights)


def load_judge(cfg: JudgeConfig):
    """The judge scorer: RM directories as one `RewardEnsemble`, loaded exactly as `generate` loads its RMs."""
    from bonsynth.rm.ensemble import RewardEnsemble

    check_judge_sources(cfg)
    if cfg.llm:
        from bonsynth.judge.llm import PREFIX, LLMJudge

        return LLMJudge(cfg.judges[0].removeprefix(PREFIX), mode=cfg.judge_mode, template=cfg.judge_prompt,
                        base_url=cfg.base_url, concurrency=cfg.concurrency, max_tokens=cfg.judge_max_tokens,
                        **cfg.backend_options)
    return RewardEnsemble.load(cfg.judges, cfg.judge_weights, engine="hf", device=cfg.device, dtype=cfg.dtype,
                               prefix_sharing=cfg.prefix_sharing, trust_remote_code=cfg.trust_remote_code,
                               allow_unsafe_weights=cfg.allow_unsafe_weights)


def same_as_proxy(cfg: JudgeConfig, manifest: dict) -> bool:
    """Whether the judge is the RM (mix) that selected: then gold == proxy and the report proves nothing."""
    conf = manifest["config"]
    if cfg.llm:
        return False
    rewards = [str(Path(p).expanduser().resolve()) for p in conf.get("rewards") or []]
    judges = [str(Path(p).expanduser().resolve()) for p in cfg.judges]
    if rewards != judges:
        return False
    if len(judges) == 1:
        return True
    rw = conf.get("reward_weights") or [1.0 / len(rewards)] * len(rewards)
    jw = cfg.judge_weights or [1.0 / len(judges)] * len(judges)
    return all(math.isclose(a, b) for a, b in zip(rw, jw, strict=True))


def _scored_prompts(cfg: JudgeConfig, manifest: dict, scorer, counts: dict) -> list[tuple[list[float], list[float]]]:
    """Per usable prompt: (proxy keys, judge scores) of its scored candidates, in candidate order.

    The file is read in chunks of whole prompts and each chunk is scored in one call, so the judge makes one
    pass over the candidates and memory stays bounded by the chunk.
    """
    path = Path(cfg.run_dir) / outputs.CANDIDATES
    length_normalize = bool(manifest["config"].get("length_normalize"))
    result: list[tuple[list[float], list[float]]] = []
    pending: list[tuple[list[float], list]] = []  # (proxy keys, prompt) per prompt in the chunk
    prompts: list = []
    texts: list[str] = []

    def flush() -> None:
        if not texts:
            pending.clear()
            return
        gold = [float(x) for x in scorer.score(prompts, texts).combined]
        k = 0
        for keys, _ in pending:
            g = gold[k : k + len(keys)]
            k += len(keys)
            pairs = [(p, x) for p, x in zip(keys, g, strict=True) if math.isfinite(x)]
            counts["nonfinite_judge"] += len(keys) - len(pairs)
            if pairs:
                result.append(([p for p, _ in pairs], [x for _, x in pairs]))
            else:
                counts["prompts_without_scored_candidates"] += 1
        pending.clear()
        prompts.clear()
        texts.clear()

    for row, kept in usable_prompts(path, length_normalize, counts):
        kept = [(k, row["candidates"][i]["text"]) for i, k in kept]
        pending.append(([k for k, _ in kept], row["prompt"]))
        prompts.extend([row["prompt"]] * len(kept))
        texts.extend(t for _, t in kept)
        if len(texts) >= SCORE_CHUNK:
            flush()
    flush()
    return result


def judge_run(cfg: JudgeConfig, *, scorer=None, judge_name: str | None = None) -> dict:
    """Score the run's candidates with the judge and return the report (nothing is written)."""
    cfg.validate()
    manifest = read_run(cfg.run_dir)
    n_max = int(manifest["config"]["n"])
    for _ in iter_candidate_rows(Path(cfg.run_dir) / outputs.CANDIDATES):
        pass  # a damaged file fails here, in one line, before any model loads
    own = scorer is None
    t0 = time.perf_counter()
    if scorer is None:
        scorer = load_judge(cfg)
    t_load = time.perf_counter() - t0
    counts = dict.fromkeys(("prompts", "candidates", "prompts_skipped", "null_proxy_reward", "nonfinite_judge",
                            "prompts_without_scored_candidates"), 0)
    pairwise = cfg.llm and cfg.judge_mode == "pairwise"
    try:
        t1 = time.perf_counter()
        data = _pairwise_wins(cfg, manifest, scorer, counts) if pairwise else _scored_prompts(cfg, manifest, scorer,
                                                                                              counts)
        t_score = time.perf_counter() - t1
        describe = scorer.describe() if callable(getattr(scorer, "describe", None)) else []
    finally:
        if own and hasattr(scorer, "close"):
            scorer.close()
    if hasattr(scorer, "unparsable"):  # an LLM judge: its NaNs are answers it could not parse
        counts["unparsable"] = int(scorer.unparsable)
        counts["nonfinite_judge"] = max(0, counts["nonfinite_judge"] - counts["unparsable"])
    counts["prompts_used"] = len(data)
    if not pairwise:
        counts["candidates_used"] = sum(len(p) for p, _ in data)
    name = judge_name or " + ".join(j if cfg.llm else Path(j.rstrip("/")).name or j for j in cfg.judges)
    if not data:
        raise InputError("no prompt has a candidate scored by both the proxy and the judge (all skipped, null, "
                         "non-finite or unparsable): nothing to judge", path=Path(cfg.run_dir) / outputs.CANDIDATES)
    timings = {"load_s": round(t_load, 3), "score_s": round(t_score, 3)}
    if pairwise:
        return build_pairwise_report(cfg, manifest, data, counts, name, describe, timings=timings, n_max=n_max)
    return build_report(cfg, manifest, data, counts, name, describe, timings=timings, n_max=n_max)


def _pairwise_wins(cfg: JudgeConfig, manifest: dict, judge, counts: dict) -> list[float]:
    """Per usable prompt: the gold win rate of the proxy's pick against a uniformly random candidate (itself
    counted as a tie, as in the pointwise report), from one judged comparison per other candidate."""
    path = Path(cfg.run_dir) / outputs.CANDIDATES
    length_normalize = bool(manifest["config"].get("length_normalize"))
    wins: list[float] = []
    items: list = []

    def flush() -> None:
        for res in judge.compare(items):
            parsed = [x for x in res if x is not None]
            if parsed or not res:
                wins.append((0.5 + sum(parsed)) / (1 + len(parsed)))
            else:
                counts["prompts_without_scored_candidates"] += 1
        items.clear()

    pending = 0
    for row, kept in usable_prompts(path, length_normalize, counts):
        cands = row["candidates"]
        pick = kept[estimator.proxy_pick([k for _, k in kept])][0]
        others = [(i, cands[i]["text"]) for i, _ in kept if i != pick]
        items.append((row["prompt"], cands[pick]["text"], others))
        pending += len(others)
        if pending >= SCORE_CHUNK:
            flush()
            pending = 0
    flush()
    counts["comparisons"] = judge.requests
    return wins


def _llm_options(cfg: JudgeConfig) -> dict:
    from bonsynth.redact import redact_url

    if not cfg.llm:
        return {}
    return {"options": {"mode": cfg.judge_mode, "prompt": cfg.judge_prompt,
                        "base_url": redact_url(cfg.base_url) if cfg.base_url else None,
                        "concurrency": cfg.concurrency, "max_tokens": cfg.judge_max_tokens}}


def build_pairwise_report(cfg: JudgeConfig, manifest: dict, wins: Sequence[float], counts: dict, name: str,
                          describe: list, *, timings: dict, n_max: int) -> dict:
    """judge.json for a pairwise LLM judge: the win rate and its CI (no curve: that would need every pair)."""
    w = np.asarray(wins, dtype=np.float64)
    ci = estimator.bootstrap_ci(w, resamples=cfg.bootstrap, seed=cfg.seed)
    rate = float(w.mean())
    if ci and ci[0] > 0.5:
        verdict = (f"Best-of-{n_max} helps under {name}: the proxy's pick beats a random candidate of its prompt "
                   f"{rate:.1%} of the time (95% CI {ci[0]:.1%} to {ci[1]:.1%}, above 50%).")
    elif ci and ci[1] < 0.5:
        verdict = (f"Best-of-{n_max} hurts under {name}: the proxy's pick beats a random candidate only "
                   f"{rate:.1%} of the time (95% CI {ci[0]:.1%} to {ci[1]:.1%}, below 50%).")
    else:
        verdict = (f"Best-of-{n_max} does not measurably help under {name}: the proxy's pick beats a random "
                   f"candidate {rate:.1%} of the time, and the 95% CI includes 50% (a null result).")
    return {
        "bonsynth_judge": 1,
        "run_dir": str(cfg.run_dir),
        "judge": {"name": name, "paths": list(cfg.judges), "weights": None, "models": describe, **_llm_options(cfg)},
        "proxy": {"rewards": manifest["config"].get("rewards"), "reward_weights": manifest["config"].get("reward_weights"),
                  "length_normalize": bool(manifest["config"].get("length_normalize"))},
        "judge_is_proxy": False,
        "N": n_max,
        "counts": counts,
        "curve": None,
        "recommended_n": None,
        "peak_n": None,
        "gold_win_rate_vs_random": rate,
        "gold_win_rate_ci95": list(ci) if ci else None,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "unit": "prompt"},
        "rank_agreement": None,
        "rank_agreement_prompts": 0,
        "verdict": verdict,
        "warnings": [],
        "timings": timings,
    }


def build_report(cfg: JudgeConfig, manifest: dict, data: Sequence[tuple[Sequence[float], Sequence[float]]],
                 counts: dict, name: str, describe: list, *, timings: dict, n_max: int) -> dict:
    """judge.json's content from the per-prompt (proxy, gold) scores."""
    t0 = time.perf_counter()
    rows = estimator.curve(data, n_max)
    rec_n = estimator.recommended_n(rows)
    wins = np.array([estimator.win_rate_vs_random(p, g) for p, g in data])
    ci = estimator.bootstrap_ci(wins, resamples=cfg.bootstrap, seed=cfg.seed)
    taus = [estimator.kendall_tau_b(p, g) for p, g in data]
    defined = [t for t in taus if t is not None]
    same = same_as_proxy(cfg, manifest)
    warnings = []
    if same:
        warnings.append("the judge is the selecting RM (the run's --reward): gold equals proxy, so this report "
                        "measures nothing about quality; judge with a different model")
    conf = manifest["config"]
    if conf.get("dedup") or conf.get("min_reward") is not None:
        warnings.append("the run used --dedup/--min-reward; the best-of-n curve ranks by the proxy reward alone")
    timings = dict(timings, stats_s=round(time.perf_counter() - t0, 3))
    return {
        "bonsynth_judge": 1,
        "run_dir": str(cfg.run_dir),
        "judge": {"name": name, "paths": list(cfg.judges), "weights": cfg.judge_weights, "models": describe,
                  **_llm_options(cfg)},
        "proxy": {"rewards": conf.get("rewards"), "reward_weights": conf.get("reward_weights"),
                  "length_normalize": bool(conf.get("length_normalize"))},
        "judge_is_proxy": same,
        "N": n_max,
        "counts": counts,
        "curve": rows,
        "recommended_n": rec_n,
        "peak_n": max(rows, key=lambda r: r["gold_mean"])["n"],
        "gold_win_rate_vs_random": float(wins.mean()),
        "gold_win_rate_ci95": list(ci) if ci else None,
        "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "unit": "prompt"},
        "rank_agreement": float(np.mean(defined)) if defined else None,
        "rank_agreement_prompts": len(defined),
        "verdict": estimator.verdict(rows, name, rec_n),
        "warnings": warnings,
        "timings": timings,
    }

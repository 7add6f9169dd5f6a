"""Does best-of-N help under a gold judge the proxy never saw? The curve, the win rate and a loop with a control.

Gao et al. (2022) measure best-of-n against a *gold* reward model that the selecting *proxy* never trained on:
the proxy's reward always rises with n, the gold reward may not. This script replays that on real data and
real models, offline, through the `bonsynth` CLI as a user would run it:

1. **Data.** `../shared/data/hh-rlhf-harmless-base-1500.jsonl` (skipped cleanly when absent), shuffled once
   with `--seed` and cut into three disjoint parts: gold-train (`--gold-pairs`), proxy-train (`--proxy-pairs`,
   a small part) and held-out (the rest). The parts live in the work folder only, never in the project.
2. **Judges.** The proxy RM: `rm slice` of all-MiniLM-L6-v2 (`demo:minilm`) to its first `--proxy-layers`
   layers, trained on proxy-train. The gold RM: the whole 6-layer MiniLM (the stronger base), trained on the
   larger gold-train part. Both are measured on the held-out pairs (`rm eval`): the gold RM's own accuracy
   says how far to trust it as a judge.
3. **Best-of-N run.** SmolLM2-135M-Instruct (`demo:smollm2`) answers held-out hh-rlhf prompts (the
   transcripts up to the last "Assistant:", as chat messages) with N = `--n` candidates each;
   `generate --reward PROXY --judge GOLD` selects with the proxy only and writes the judge report: proxy and
   gold reward of the proxy's best-of-n for n = 1, 2, 4, ..., N (exact over all subsets), the gold win rate
   of the pick against a random candidate with a bootstrap CI, rank agreement, and where best-of-n stops
   helping.
4. **Loop.** `bonsynth loop` with RAFT/SFT for `--rounds` rounds on other held-out prompts, selecting with
   the proxy, `eval.judge: [GOLD]` and `control: random` (a control policy trained each round on a random
   candidate of the same pool). The question it answers: did selection beat plain fine-tuning on fresh
   samples, under the gold judge?

Every number in the output is read back from the files bonsynth wrote (`judge.json`, `loop_summary.json`,
`rm eval --json`). A null or negative result is printed as it is.

    # smoke run (minutes): tiny sizes, a check that the steps run, not a result
    python benchmarks/bench_gold.py --smoke
    # the BENCHMARKS.md run (about 1-1.5 h on 2 CPU cores; --stages lets a long run go in parts)
    python benchmarks/bench_gold.py --work /tmp/gold --out-md gold.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RM_RECIPE, rm_recipe_args  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HH_RLHF = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-1500.jsonl"
STAGES = ("split", "rms", "run", "loop", "report")
_TURN = re.compile(r"\n\n(Human|Assistant):")


# ---- pure helpers (tested in tests/test_gold_bench.py) --------------------------------------------------------


def split_parts(n: int, sizes: dict[str, int | None], seed: int) -> dict[str, list[int]]:
    """Disjoint, sorted row indices for each named part, in order; a size of None takes every row left.

    The same seed gives the same parts; the parts never share a row, so the gold judge never trained on a
    pair the proxy saw, and neither saw a held-out prompt.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: dict[str, list[int]] = {}
    at = 0
    for name, size in sizes.items():
        take = n - at if size is None else size
        if take < 0 or at + take > n:
            raise ValueError(f"parts {sizes} need more than the {n} rows there are")
        out[name] = sorted(order[at:at + take])
        at += take
    return out


def hh_prompt_messages(transcript: str) -> list[dict[str, str]] | None:
    """An hh-rlhf transcript up to its last "Assistant:" turn, as chat messages (None when it has no such turn).

    "\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant: d" becomes user a, assistant b, user c: the
    conversation the policy must answer. Empty turns are dropped; the last message must be the user's.
    """
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        return None
    parts = _TURN.split(transcript[:cut])
    messages = []
    for role, text in zip(parts[1::2], parts[2::2], strict=True):
        text = text.strip()
        if text:
            messages.append({"role": "user" if role == "Human" else "assistant", "content": text})
    if not messages or messages[-1]["role"] != "user":
        return None
    return messages


def prompt_rows(rows: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Distinct held-out conversations as prompt rows {"id", "messages"}, first occurrence first."""
    out, seen = [], set()
    for i, row in enumerate(rows):
        messages = hh_prompt_messages(row.get("chosen", ""))
        if messages is None:
            continue
        key = json.dumps(messages)
        if key in seen:
            continue
        seen.add(key)
        out.append({"id": f"{prefix}{i:04d}", "messages": messages})
    return out


def fmt(x: float | None, digits: int = 4) -> str:
    """Signed, `digits` significant digits: a small proxy RM's rewards can all sit within 0.001 of each other."""
    return "n/a" if x is None else f"{x:+.{digits}g}"


def fmt_ci(rate: float | None, ci: list[float] | None) -> str:
    if rate is None:
        return "n/a"
    return f"{rate:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def curve_table(judge: dict[str, Any]) -> str:
    """The judge report's best-of-n curve as a markdown table."""
    lines = ["| n | √KL bound | proxy mean | gold mean (± s.e.) | oracle gold mean |", "|---|---|---|---|---|"]
    for row in judge["curve"]:
        se = row.get("gold_se")
        gold = fmt(row["gold_mean"]) + (f" ± {se:.3f}" if se is not None else "")
        lines.append(f"| {row['n']} | {row['kl_bound'] ** 0.5:.3f} | {fmt(row['proxy_mean'])} | {gold} | "
                     f"{fmt(row['oracle_gold_mean'])} |")
    return "\n".join(lines)


def loop_table(summary: dict[str, Any], rounds: list[dict[str, Any]], control: list[dict[str, Any]]) -> str:
    """Per round and arm: proxy and gold mean of the eval samples, and gold win rates with their 95% CIs."""
    def win(g: dict[str, Any], name: str) -> str:
        return fmt_ci(g.get(f"gold_win_rate_vs_{name}"), g.get(f"gold_win_rate_vs_{name}_ci95"))

    lines = ["| policy | proxy mean (eval) | gold mean (eval) | gold win rate vs base [95% CI] | "
             "vs previous round | best-of-N arm vs control arm |", "|---|---|---|---|---|---|"]
    base = summary.get("baseline") or {}
    lines.append(f"| base policy | {fmt(base.get('eval', {}).get('reward_mean'))} | "
                 f"{fmt(base.get('gold', {}).get('gold_mean'))} | — | — | — |")
    for arm, recs in (("best-of-N (proxy)", rounds), ("control (random)", control)):
        for r, rec in enumerate(recs):
            g = rec.get("gold", {})
            vs_control = win(g, "control") if arm.startswith("best") else "—"
            lines.append(f"| round {r} {arm} | {fmt(rec.get('eval', {}).get('reward_mean'))} | "
                         f"{fmt(g.get('gold_mean'))} | {win(g, 'base')} | {win(g, 'previous')} | {vs_control} |")
    return "\n".join(lines)


# ---- the run -----------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def gold_rm_args(size: dict[str, Any]) -> list[str]:
    """Both RMs' `rm train` options: issue 18's chosen recipe (RM_RECIPE), at this run's epochs and length."""
    return rm_recipe_args(epochs=float(size["epochs"]), max_length=int(size["max_length"]))


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        return dict(gold_pairs=48, proxy_pairs=24, max_length=64, n=4, prompts=4, max_new_tokens=16,
                    rounds=1, loop_prompts=4, loop_n=2, eval_prompts=3, eval_n=2, epochs=0.5)
    return dict(gold_pairs=args.gold_pairs, proxy_pairs=args.proxy_pairs, max_length=args.max_length, n=args.n,
                prompts=args.prompts, max_new_tokens=args.max_new_tokens, rounds=args.rounds,
                loop_prompts=args.loop_prompts, loop_n=args.loop_n, eval_prompts=args.eval_prompts,
                eval_n=args.eval_n, epochs=args.rm_epochs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hh-rlhf", type=Path, default=HH_RLHF, help="the hh-rlhf pairs (skipped when absent)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, the RMs, generation and the loop")
    ap.add_argument("--gold-pairs", type=int, default=1000, help="pairs the gold RM trains on")
    ap.add_argument("--proxy-pairs", type=int, default=200, help="pairs the proxy RM trains on (a small part)")
    ap.add_argument("--proxy-layers", type=int, default=3, help="MiniLM layers the proxy keeps (of 6)")
    ap.add_argument("--rm-epochs", type=float, default=RM_RECIPE["epochs"],
                    help="RM epochs (default: the RM sweep's chosen recipe, benchmarks/_common.py RM_RECIPE)")
    ap.add_argument("--max-length", type=int, default=RM_RECIPE["max_length"],
                    help="RM training length (prompts left-truncated; default: RM_RECIPE's)")
    ap.add_argument("--policy", default="demo:smollm2")
    ap.add_argument("--n", type=int, default=32, help="candidates per prompt in the best-of-N run")
    ap.add_argument("--prompts", type=int, default=48, help="held-out prompts in the best-of-N run")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--backend", default="vllm", help="backend of the best-of-N run (vllm, hf)")
    ap.add_argument("--loop-backend", default="hf", help="backend of the loop's generate runs (many, small)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loop-prompts", type=int, default=48, help="fresh prompts per loop round")
    ap.add_argument("--loop-n", type=int, default=4, help="candidates per prompt in the loop")
    ap.add_argument("--eval-prompts", type=int, default=32, help="the loop's fixed eval prompts")
    ap.add_argument("--eval-n", type=int, default=2, help="samples per eval prompt")
    ap.add_argument("--policy-lr", type=float, default=2e-5)
    ap.add_argument("--threads", type=int, default=None, help="OMP threads of every bonsynth step")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the steps run (not a result)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (kept; default: a temporary one, removed)")
    ap.add_argument("--out-md", type=Path, default=None, help="also append the result block to this file")
    args = ap.parse_args(argv)

    from _common import bonsynth_cli, command, machine  # benchmarks/ is on sys.path when run as a script

    if not args.hh_rlhf.exists():
        print(f"skipped: {args.hh_rlhf} not found (the gold-judge experiment needs the hh-rlhf pairs)")
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        ap.error(f"--stages: unknown {bad}; choose from {list(STAGES)}")
    size = _sizes(args)
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    tmp = None
    work = args.work
    if work is None:
        tmp = tempfile.mkdtemp(prefix="bench-gold-")
        work = Path(tmp)
    work.mkdir(parents=True, exist_ok=True)
    timings_path = work / "timings.json"
    timings: dict[str, float] = _read_json(timings_path) if timings_path.exists() else {}
    loads_path = work / "loads.json"
    loads: list[float] = _read_json(loads_path)["loads"] if loads_path.exists() else []
    # a long run may go in parts (--stages): the report names every command that produced it
    commands_path = work / "commands.json"
    commands: list[str] = _read_json(commands_path)["commands"] if commands_path.exists() else []
    if set(stages) != {"report"}:
        commands.append(command())
        commands_path.write_text(json.dumps({"commands": commands}), encoding="utf-8")

    def cli(cli_args: list[str], step: str) -> str:
        mine: dict[str, float] = {}
        out = bonsynth_cli(cli_args, mine, step, env)
        # two stages may run side by side (--stages run and --stages loop): merge into the files, never overwrite
        saved = _read_json(timings_path) if timings_path.exists() else {}
        timings.update({**saved, step: saved.get(step, 0.0) + mine[step]})
        timings_path.write_text(json.dumps(timings), encoding="utf-8")
        saved_loads = _read_json(loads_path)["loads"] if loads_path.exists() else []
        loads[:] = [*saved_loads, os.getloadavg()[0]]
        loads_path.write_text(json.dumps({"loads": loads}), encoding="utf-8")
        return out

    d = work / "data"
    proxy, gold = work / "rm-proxy", work / "rm-gold"
    run_dir, loop_dir = work / "bon-run", work / "loop"
    try:
        if "split" in stages:
            lines = [ln for ln in args.hh_rlhf.read_text(encoding="utf-8").splitlines() if ln.strip()]
            parts = split_parts(len(lines), {"gold": size["gold_pairs"], "proxy": size["proxy_pairs"],
                                             "heldout": None}, args.seed)
            d.mkdir(parents=True, exist_ok=True)
            for name, idx in parts.items():
                (d / f"{name}.jsonl").write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
            held = [json.loads(lines[i]) for i in parts["heldout"]]
            prompts = prompt_rows(held, "hh-")
            need = size["prompts"] + size["eval_prompts"] + size["rounds"] * size["loop_prompts"]
            if len(prompts) < need:
                raise SystemExit(f"only {len(prompts)} distinct held-out prompts, the sizes need {need}")
            # the best-of-N run's prompts, the loop's eval prompts, the loop's training prompts: disjoint
            _write_jsonl(d / "prompts-run.jsonl", prompts[:size["prompts"]])
            rest = prompts[size["prompts"]:]
            _write_jsonl(d / "prompts-eval.jsonl", rest[:size["eval_prompts"]])
            _write_jsonl(d / "prompts-loop.jsonl", rest[size["eval_prompts"]:])
            print(f"[split] gold {len(parts['gold'])}, proxy {len(parts['proxy'])}, held-out "
                  f"{len(parts['heldout'])} pairs; {len(prompts)} distinct held-out prompts", file=sys.stderr)

        common = [*gold_rm_args(size), "--eval-split", "0", "--seed", str(args.seed), "--skip-invalid",
                  "--overwrite"]
        if "rms" in stages:
            sliced = work / f"minilm-{args.proxy_layers}l"
            cli(["rm", "slice", "--base", "demo:minilm", "--layers", f"0:{args.proxy_layers}", "--out",
                 str(sliced), "--overwrite"], "slice proxy base")
            cli(["rm", "train", "--base", str(sliced), "--data", str(d / "proxy.jsonl"), "--objective", "pairwise",
                 "--out", str(proxy), *common], "train proxy")
            cli(["rm", "train", "--base", "demo:minilm", "--data", str(d / "gold.jsonl"), "--objective",
                 "pairwise", "--out", str(gold), *common], "train gold")
            accs = {}
            for name, path in (("proxy", proxy), ("gold", gold)):
                out = cli(["rm", "eval", "--model", str(path), "--data", str(d / "heldout.jsonl"), "--skip-invalid",
                           "--json"], f"eval {name}")
                accs[name] = next(json.loads(ln) for ln in out.splitlines() if ln.startswith("{"))
            (work / "rm-accuracy.json").write_text(json.dumps(accs), encoding="utf-8")

        if "run" in stages:
            cli(["generate", "--policy", args.policy, "--reward", str(proxy), "--prompts", str(d / "prompts-run.jsonl"),
                 "--limit", str(size["prompts"]), "--n", str(size["n"]), "--max-new-tokens", str(size["max_new_tokens"]), "--temperature",
                 str(args.temperature), "--top-p", str(args.top_p), "--seed", str(args.seed), "--backend",
                 args.backend, "--select", "best", "--judge", str(gold), "--out", str(run_dir), "--quiet",
                 # eager: torch.compile's warm-up (a dummy batch of max_num_batched_tokens) costs the CPU more
                 # than it saves at this size; 2048 tokens hold the longest prompt plus the reply
                 *(["--enforce-eager", "--max-model-len", "2048"] if args.backend == "vllm" else []),
                 *(["--resume"] if (run_dir / "manifest.json").exists() else [])], "best-of-N run + judge")

        if "loop" in stages:
            import yaml

            recipe = {
                "name": "gold-bench", "out": str(loop_dir), "seed": args.seed, "policy": args.policy,
                "rewards": [str(proxy)], "prompts": [str(d / "prompts-loop.jsonl")], "rounds": size["rounds"],
                "prompts_per_round": size["loop_prompts"], "device": "cpu",
                "generation": {"n": size["loop_n"], "temperature": args.temperature, "top_p": args.top_p,
                               "max_new_tokens": size["max_new_tokens"], "backend": args.loop_backend,
                               "batch_size": 16},
                "selection": {"select": "best"},
                "update": {"method": "sft", "epochs": 1, "lr": args.policy_lr, "batch_size": 4, "grad_accum": 1,
                           "max_length": 512, "warmup_ratio": 0.0},
                "eval": {"prompts": [str(d / "prompts-eval.jsonl")], "num_prompts": size["eval_prompts"],
                         "n": size["eval_n"], "max_new_tokens": size["max_new_tokens"], "judge": [str(gold)]},
                "control": "random",
            }
            path = work / "loop.yaml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
            cli(["loop", str(path), "--quiet", *(["--resume"] if (loop_dir / "loop_state.json").exists() else [])],
                "loop")

        if "report" in stages:
            block = report(work, args, size, timings, machine(loads), commands)
            print(block)
            if args.out_md:
                with open(args.out_md, "a", encoding="utf-8") as fh:
                    fh.write(block + "\n\n")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(work: Path, args: argparse.Namespace, size: dict[str, Any], timings: dict[str, float], machine_line: str,
           commands: list[str]) -> str:
    """The BENCHMARKS.md block, every number read back from the files bonsynth wrote."""
    from _common import timings_line
    accs = _read_json(work / "rm-accuracy.json")
    judge = _read_json(work / "bon-run" / "judge.json")
    summary = _read_json(work / "loop" / "loop_summary.json")
    rounds = summary.get("rounds", [])
    control = summary.get("control", {}).get("rounds", [])
    wr, ci = judge["gold_win_rate_vs_random"], judge.get("gold_win_rate_ci95")
    counts = judge.get("counts", {})
    lines = [
        f"Gold-judge experiment, {time.strftime('%Y-%m-%d')}{' (SMOKE: tiny sizes, not a result)' if args.smoke else ''}.",
        "",
        f"- judges: proxy = all-MiniLM-L6-v2 sliced to {args.proxy_layers} layers, trained on {size['proxy_pairs']} "
        f"pairs; gold = the whole 6-layer MiniLM on {size['gold_pairs']} disjoint pairs; both with the RM sweep's "
        f"chosen recipe (`{' '.join(gold_rm_args(size))}`)",
        f"- held-out accuracy ({accs['gold']['num_examples']} pairs neither saw): "
        f"gold {accs['gold']['accuracy']:.3f}, proxy {accs['proxy']['accuracy']:.3f}",
        f"- best-of-N run: `{args.policy}`, {size['prompts']} held-out prompts × N = {size['n']}, "
        f"{size['max_new_tokens']} new tokens, temperature {args.temperature:g}, top-p {args.top_p:g}, "
        f"backend {args.backend}, seed {args.seed}; {counts.get('prompts_used')} prompts and "
        f"{counts.get('candidates_used')} candidates judged, {counts.get('prompts_skipped', 0)} prompts skipped",
        "",
        curve_table(judge),
        "",
        f"Gold win rate of the proxy's best-of-{size['n']} pick against a random candidate: {fmt_ci(wr, ci)} "
        f"(ties half; bootstrap over prompts). Rank agreement (mean Kendall τ, proxy vs gold within a prompt): "
        f"{fmt(judge.get('rank_agreement'))}. Peak n under gold: {judge.get('peak_n')}; recommended n: "
        f"{judge.get('recommended_n')}.",
        "",
        f"Verdict (bonsynth judge): {judge.get('verdict')}",
        "",
        f"Loop: {size['rounds']} RAFT/SFT rounds, {size['loop_prompts']} fresh prompts × {size['loop_n']} "
        f"candidates per round, full fine-tune lr {args.policy_lr:g}, 1 epoch; eval {size['eval_prompts']} fixed "
        f"prompts × {size['eval_n']} samples, gold judge on every eval; control arm = a random candidate of the "
        f"same pool per prompt.",
        "",
        loop_table(summary, rounds, control),
        "",
        f"Machine: {machine_line}. Commands: " + "; ".join(f"`{c}`" for c in commands) + ".",
        "",
        timings_line(timings),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

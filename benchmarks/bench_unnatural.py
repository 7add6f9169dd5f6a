"""The seed experiment of issue 17 as one recipe: synthesise instructions, best-of-N, SFT, 3 rounds, gold-judged.

    python benchmarks/bench_unnatural.py --out runs/unnatural-bon      # ~1.5 h on 2 CPU cores; writes BENCHMARKS.md
    python benchmarks/bench_unnatural.py --out runs/unnatural-bon --no-write   # print the block only

Runs exactly what `recipes/unnatural-bon.yaml`'s header tells a user to run, from the repository root:

1. the two RMs, unless they exist (`models/rm-proxy`: pairwise on data/pairs.jsonl, the selector;
   `models/rm-gold`: binary on data/feedback.jsonl, another objective and file, the judge that never selects);
2. `bonsynth loop recipes/unnatural-bon.yaml` (with `--resume` when OUT exists, so an interrupted run continues);
3. a block in BENCHMARKS.md: per round, what synthesis kept, the proxy and gold means of the eval samples, and the
   gold win rates (vs the base policy, the previous round and the control arm trained on random candidates) with
   their 95% bootstrap CIs, read from the loop's own `loop_summary.json` and round directories.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_gold import loop_table  # noqa: E402

RECIPE = C.REPO / "recipes" / "unnatural-bon.yaml"
SECTION = "## Prompt dedup for `bonsynth prompts synth` (issue 17, 2026-12-02)"
KEY = "bench_unnatural"
RMS = {
    "models/rm-proxy": ["--base", "demo:minilm", "--data", "data/pairs.jsonl", "--objective", "pairwise",
                        "--out", "models/rm-proxy", "--max-length", "256", "--epochs", "1", "--eval-split", "0.2"],
    "models/rm-gold": ["--base", "demo:minilm", "--data", "data/feedback.jsonl", "--objective", "binary",
                       "--out", "models/rm-gold", "--max-length", "256", "--epochs", "1", "--eval-split", "0.2",
                       "--seed", "1"],
}


def _bonsynth(args: list[str], step: str, timings: dict[str, float]) -> str:
    return C.bonsynth_cli(args, timings, step, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def synth_rows(out: Path, rounds: int) -> list[list[str]]:
    """Per round: prompts kept of the candidates made, and what each filter dropped."""
    rows = []
    for r in range(rounds):
        manifest = out / f"round_{r:03d}" / "synth" / "prompts.manifest.json"
        if not manifest.exists():
            continue
        m = _json(manifest)
        counts = m["counts"]
        dropped = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "accepted" and v) or "none"
        rows.append([f"round {r}", str(m.get("candidates")), str(counts.get("accepted")), dropped])
    return rows


def rm_accuracy(path: Path) -> str:
    """The held-out accuracy `rm train` printed (saved beside the model as PATH.train.json)."""
    summary = C.REPO / f"{path}.train.json"
    if not summary.exists():
        return "-"
    m = _json(summary)
    acc = m.get("eval_accuracy")
    return f"{acc:.3f} ({m.get('num_eval')} held-out rows)" if isinstance(acc, (int, float)) else "-"


def _rate(gold: dict, name: str) -> str:
    value, ci = gold.get(f"gold_win_rate_vs_{name}"), gold.get(f"gold_win_rate_vs_{name}_ci95")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render(out: Path, timings: dict[str, float], loads: list[float]) -> str:
    summary = _json(out / "loop_summary.json")
    state = _json(out / "loop_state.json")
    n = summary["rounds_complete"]
    control = summary.get("control", {}).get("rounds", [])
    wins = []
    for r, rec in enumerate(summary["rounds"]):
        g = rec.get("gold", {})
        wins.append(f"round {r}: {_rate(g, 'base')} vs the base policy, {_rate(g, 'control')} vs the control arm")
    step_s = state.get("timings_s", {})
    lines = [
        f"<!-- {KEY} -->",
        f"### The seed experiment: `recipes/unnatural-bon.yaml`, {n} of {summary['rounds_planned']} rounds "
        f"({C.today()})",
        "",
        f"- machine: {C.machine(loads)}; `OMP_NUM_THREADS=1`",
        f"- command: `{C.command()}` (runs the recipe header's two `rm train` commands, then "
        f"`bonsynth loop recipes/unnatural-bon.yaml`)",
        "- policy `demo:smollm2` (SmolLM2-135M-Instruct, hf backend, CPU); each round synthesises 48 fresh "
        "instructions with the round's current policy from 16 hand-written seeds, samples 8 replies of up to 96 "
        "tokens each, keeps the proxy RM's best (SFT, 1 epoch, lr 2e-5); a control arm trains on a random "
        "candidate of the same pool; eval: the 16 fixed hand-written prompts of data/instruction_eval.jsonl × 4 "
        "samples per policy",
        f"- RMs (held-out accuracy on 20% of their own data, as `rm train` printed it): proxy `models/rm-proxy` (pairwise, data/pairs.jsonl) "
        f"{rm_accuracy(Path('models/rm-proxy'))}; gold `models/rm-gold` (binary, data/feedback.jsonl; only judges) "
        f"{rm_accuracy(Path('models/rm-gold'))}",
        "",
        "Synthesis per round:",
        "",
        C.table(["round", "candidates", "kept", "dropped by filter"], synth_rows(out, n)),
        "",
        "Eval per round (gold = the gold RM's reward of the eval samples; win rates with 95% bootstrap CIs over "
        "prompts, ties half):",
        "",
        loop_table(summary, summary["rounds"], control),
        "",
        "Gold win rate per round: " + "; ".join(wins) + ".",
        "",
        "Timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in {**timings, **step_s}.items()) + ".",
        f"<!-- /{KEY} -->",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=C.REPO / "runs" / "unnatural-bon")
    ap.add_argument("--no-write", action="store_true", help="print the block, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    os.chdir(C.REPO)  # the recipe's paths (models/..., demo:data/...) are relative to the repository root
    timings: dict[str, float] = {}
    loads = [C.load_avg()]
    for path, train_args in RMS.items():
        if not (C.REPO / path / "bonsynth_rm.json").exists():
            stdout = _bonsynth(["rm", "train", *train_args], f"train {Path(path).name}", timings)
            (C.REPO / f"{path}.train.json").write_text(stdout, encoding="utf-8")
    loads.append(C.load_avg())
    resume = ["--resume"] if (args.out / "loop_state.json").exists() else []
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bonsynth", "loop", str(RECIPE), "--out", str(args.out), *resume],
                          cwd=C.REPO, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode != 0:
        raise SystemExit(f"bonsynth loop failed with exit code {proc.returncode}")
    timings["loop (this invocation)"] = time.perf_counter() - t
    loads.append(C.load_avg())
    block = render(args.out, timings, loads)
    print(block)
    if not args.no_write:
        C.write_block_in(SECTION, KEY, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

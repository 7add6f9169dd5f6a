"""Time near-duplicate removal for `bonsynth prompts synth`: MinHash LSH (datasketch) + exact Jaccard check,
against the quadratic all-pairs exact Jaccard baseline (Self-Instruct's approach, with Jaccard for ROUGE-L).

    python benchmarks/bench_dedup.py [--sizes 10000,100000] [--baseline-size 2000] [--repeats 3] [--quick]

Prompts are synthetic: 6-40 words drawn from a 20k-word Zipf(1.1) vocabulary (so, as in real text, frequent
words are shared by many prompts), and 15% of them edited copies of an earlier prompt (a few words replaced or
added), so the threshold is really exercised. Both methods apply the same greedy rule (a prompt is dropped when
its Jaccard with an earlier kept one is >= 0.7, the first occurrence wins); on the baseline subset their kept
lists are compared. The baseline is timed on `--baseline-size` prompts only: its time at the larger sizes is an
**extrapolation** (x (N / subset)^2, as it compares each prompt with every kept one), labelled as such.
Prints a block for BENCHMARKS.md (it does not write the file).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import command, load_avg, machine, median  # noqa: E402

from bonsynth.data.synth import NearDupIndex, dedup_exact  # noqa: E402

THRESHOLD = 0.7


def synthetic_prompts(n: int, seed: int = 0, vocab: int = 20000, dup_share: float = 0.15) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.1 for r in range(vocab)))

    def word() -> str:
        return words[bisect.bisect_left(cum, rng.random() * cum[-1])]

    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_share:
            toks = rng.choice(out).split()
            for _ in range(rng.randint(0, 3)):
                toks[rng.randrange(len(toks))] = word()
            if rng.random() < 0.5:
                toks.insert(rng.randrange(len(toks) + 1), word())
            out.append(" ".join(toks))
        else:
            out.append(" ".join(word() for _ in range(rng.randint(6, 40))))
    return out


def lsh_dedup(texts: list[str], ngram: int) -> tuple[list[int], int]:
    index = NearDupIndex(THRESHOLD, ngram=ngram)
    kept = [i for i, t in enumerate(texts) if index.add(i, t) is None]
    return kept, index.candidates_checked


def timed(fn, repeats: int, loads: list[float]):
    """Median wall seconds, median CPU seconds of this process (what it costs on an idle core: the wall time
    also counts the waits for a core when other jobs share the machine), and the last result."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        loads.append(load_avg())
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        print(f"#   {times[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU (load {loads[-1]:.1f})", file=sys.stderr)
    return median(times), median(cpu), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--baseline-size", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ngram", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="sizes 2000,5000, baseline 500, one repeat")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base_n, repeats = args.baseline_size, args.repeats
    if args.quick:
        sizes, base_n, repeats = [2000, 5000], 500, 1
    texts = synthetic_prompts(max(sizes + [base_n]))
    loads: list[float] = []

    print(f"# baseline: all-pairs exact Jaccard on {base_n}", file=sys.stderr)
    t_base, c_base, kept_base = timed(lambda: dedup_exact(texts[:base_n], THRESHOLD, args.ngram), repeats, loads)
    (kept_lsh_sub, _) = lsh_dedup(texts[:base_n], args.ngram)
    agree = kept_lsh_sub == kept_base
    rows = []
    for n in sizes:
        print(f"# MinHash LSH on {n}", file=sys.stderr)
        t, c, (kept, cands) = timed(lambda n=n: lsh_dedup(texts[:n], args.ngram), repeats, loads)
        extrap = t_base * (n / base_n) ** 2
        rows.append((n, t, c, len(kept), cands, extrap))

    lines = [
        "### Prompt dedup (issue 17): MinHash LSH vs all-pairs exact Jaccard",
        "",
        f"Machine: {machine(loads)}; `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`, one process.",
        f"Command: `{command()}`",
        "",
        f"Synthetic prompts (6-40 words, Zipf(1.1) over 20k words, 15% edited copies); similarity: Jaccard of word "
        f"{args.ngram}-gram sets, drop at >= {THRESHOLD}, first occurrence wins; median of {repeats}.",
        f"MinHash LSH: datasketch, 128 permutations, {NearDupIndex(THRESHOLD).bands} bands x "
        f"{NearDupIndex(THRESHOLD).rows} rows, every LSH candidate checked with the exact Jaccard.",
        "",
        "| prompts | MinHash LSH wall (s) | LSH CPU (s) | kept | LSH candidates checked | all-pairs exact wall (s) "
        "| speed-up (wall) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {base_n} | {lsh_sub_time(texts[:base_n], args.ngram):.2f} (1 run) | - | {len(kept_base)} | - "
        f"| {t_base:.2f} (measured; CPU {c_base:.2f}) | - |",
    ]
    for n, t, c, k, cands, e in rows:
        lines.append(f"| {n} | {t:.2f} | {c:.2f} | {k} | {cands} | {e:.0f} (**extrapolated** from {base_n}, "
                     f"x(N/{base_n})^2) | {e / t:.0f}x (vs extrapolation) |")
    lines += [
        "",
        f"Same kept prompts as the exact baseline on the {base_n}-prompt subset: {'yes' if agree else '**no**'}.",
    ]
    if 100000 in sizes:
        t100, c100 = next((t, c) for n, t, c, *_ in rows if n == 100000)
        verdict = "met" if t100 < 60 else "**missed**"
        lines.append(f"Target: 100,000 prompts in under a minute on 2 cores: {verdict} ({t100:.1f} s wall, "
                     f"{c100:.1f} s CPU; wall time above CPU time is time spent waiting for a core that "
                     f"other jobs held, at the load shown).")
    print("\n".join(lines))


def lsh_sub_time(texts: list[str], ngram: int) -> float:
    t = time.perf_counter()
    lsh_dedup(texts, ngram)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

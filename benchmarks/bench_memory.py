"""Benchmark 5: peak RSS of `bonsynth generate` as the prompt count grows 10× and 30×.

    python benchmarks/bench_memory.py            # 100, 1000, 3000 prompts; writes its block into BENCHMARKS.md
    python benchmarks/bench_memory.py --quick    # 100 vs 1000 prompts once, prints only
    python benchmarks/bench_memory.py --counts 100,300 --repeats 1 --no-write   # a smoke run

Each point is a fresh `python -m bonsynth generate` subprocess (hf backend, tiny GPT-2 policy and RM from
the demo builders, N=4, 16 new tokens) started from a small wrapper that reads the child's peak RSS with
`getrusage(RUSAGE_CHILDREN)`. Flat means streaming; growth per 1000 prompts is reported as measured.

Every count uses the same prompts, so only their NUMBER changes: a base set of the first distinct hh-rlhf
prompts (as many as the smallest count), longest first, repeated with distinct explicit ids ("p0", "p1",
...; ids must be unique, the text may repeat) up to each count. Peak RSS is mostly the transient activations
of the heaviest batch; cycling a longer slice of the corpus for the bigger counts brought in longer prompts
and raised that peak for reasons that have nothing to do with accumulation (607 → 645 MiB, +6%, was
measured that way). Longest first puts the heaviest batch at the start of every run, so each run reaches
the same transient peak and any difference left is what the run keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "sys.stderr.write(rc.stderr.decode()[-3000:] if rc.returncode else '')\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc.returncode)\n"
)

# In-process trace: current RSS and Python's live allocated blocks after every durable batch, to tell
# accumulation (grows batch after batch) from allocator caching (steps up, then stays).
TRACE = """
import json, sys
from bonsynth.generate.pipeline import GenerateConfig, run_generate

def rss_mib():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return 0.0

points = []
def on_batch(done, total):
    points.append((done, rss_mib(), sys.getallocatedblocks()))

policy, rm, prompts, out = sys.argv[1:5]
cfg = GenerateConfig(policy=policy, rewards=[rm], prompts=prompts, out=out, n=4, max_new_tokens=16,
                     backend='hf', device='cpu', show_progress=False)
run_generate(cfg, on_batch=on_batch)
points.append(('end', rss_mib(), sys.getallocatedblocks()))
print(json.dumps(points))
"""


def base_prompts(corpus: list[str], tok: Any, size: int) -> list[str]:
    """The first `size` distinct prompts (up to the first assistant turn, last 400 characters), longest
    first in tokens: every count repeats this one set, so the length distribution never changes."""
    seen: dict[str, None] = {}
    for t in corpus:  # chosen and rejected share their prompt: keep each prompt once
        k = t.find("\n\nAssistant:")
        seen.setdefault((t[: k + 12] if k > 0 else t)[-400:], None)
        if len(seen) == size:
            break
    prompts = list(seen)
    return sorted(prompts, key=lambda p: -len(tok(p, add_special_tokens=False)["input_ids"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 vs 1000 prompts, 1 run each, no BENCHMARKS.md")
    ap.add_argument("--counts", default=None,
                    help="prompt counts, smallest first; the smallest is the base set (default 100,1000,3000)")
    ap.add_argument("--repeats", type=int, default=2, help="runs per count (1 for the largest)")
    ap.add_argument("--no-write", action="store_true", help="print the block, do not touch BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.counts, args.repeats = args.counts or "100,1000", 1
    counts = sorted(int(c) for c in (args.counts or "100,1000,3000").split(","))

    from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model
    from bonsynth.rm.meta import RMMeta

    loads = [C.load_avg()]
    corpus, source = C.corpus()
    tok = C.tokenizer_for(corpus, vocab_size=1024)
    root = Path(tempfile.mkdtemp(prefix="bench_mem_"))
    policy = save_model(tiny_causal_lm(tok, seed=1), tok, root / "policy")
    rm_dir = save_model(tiny_reward_model(tok, seed=2), tok, root / "rm")
    RMMeta(objective="pairwise").save(rm_dir)
    base = base_prompts(corpus, tok, counts[0])
    points = []
    for n in counts:
        path = root / f"prompts{n}.jsonl"
        path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": base[i % len(base)]}) + "\n"
                                for i in range(n)), encoding="utf-8")
        rss, walls = [], []
        for rep in range(1 if n == max(counts) and not args.quick else args.repeats):
            out = root / f"out{n}_{rep}"
            cmd = [sys.executable, "-m", "bonsynth", "generate", "--policy", str(policy), "--reward", str(rm_dir),
                   "--prompts", str(path), "--out", str(out), "--n", "4", "--max-new-tokens", "16",
                   "--backend", "hf", "--device", "cpu", "--quiet"]
            loads.append(C.load_avg())
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True,
                                 env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
            walls.append(time.perf_counter() - t)
            if res.returncode:
                raise SystemExit(f"generate failed ({n} prompts):\n{res.stderr}")
            rss.append(int(res.stdout.strip().splitlines()[-1]) / 1024)
            print(f"# {n} prompts run {rep}: {rss[-1]:.0f} MiB peak, {walls[-1]:.1f} s", file=sys.stderr)
        points.append((n, C.median(rss), C.median(walls), len(rss)))
    trace_n = counts[1] if len(counts) > 1 else counts[0]
    res = subprocess.run([sys.executable, "-c", TRACE, str(policy), str(rm_dir), str(root / f"prompts{trace_n}.jsonl"),
                          str(root / "trace_out")], capture_output=True, text=True,
                         env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
    if res.returncode:
        raise SystemExit(f"trace run failed:\n{res.stderr[-3000:]}")
    trace = json.loads(res.stdout.strip().splitlines()[-1])
    picks = [trace[0], trace[len(trace) // 4], trace[len(trace) // 2], trace[-2], trace[-1]]
    trace_line = "; ".join(f"after {d} prompts {r:.0f} MiB, {b / 1e3:.0f}k blocks" for d, r, b in picks)
    loads.append(C.load_avg())
    base_n, base_rss = points[0][0], points[0][1]
    rows = [[f"{n}", f"{rss:.0f}", f"{rss - base_rss:+.1f}", f"{wall:.1f}", f"{reps}"] for n, rss, wall, reps in points]
    growth = [(n, (rss - base_rss) / ((n - base_n) / 1000)) for n, rss, _, _ in points[1:]]
    targets = [[f"peak RSS flat (within 5%) when prompts grow {n / base_n:g}×", f"{base_rss:.0f} → {rss:.0f} MiB",
                "met" if rss - base_rss <= 0.05 * base_rss else "**missed**"] for n, rss, _, _ in points[1:]]
    block = [
        f"### 5. Memory: peak RSS of `generate` vs prompt count ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {C.machine(loads)}; hf backend on the CPU, no GPU",
        f"- command: `{C.command()}`; each point runs `python -m bonsynth generate --policy P --reward R --prompts "
        "FILE --out DIR --n 4 --max-new-tokens 16 --backend hf --device cpu --quiet` in a fresh process",
        f"- models: demo GPT-2 policy and RM (2 layers × 64 wide); prompts: the first {base_n} distinct prompts "
        f"from {source}, longest first, repeated with distinct ids to each count (same lengths at every count)",
        "",
        C.table(["prompts", "peak RSS MiB (median)", "vs first", "wall s", "runs"], rows),
        "",
        f"- growth per 1000 extra prompts: {', '.join(f'{g:.2f} MiB ({base_n} → {n})' for n, g in growth)}",
        f"- in-process trace of one {trace_n}-prompt run (current RSS and Python's live allocated blocks after "
        f"each durable batch of 64 prompts): {trace_line}",
        "",
        C.table(["target", "result", "status"], targets or [["peak RSS flat when prompts grow", "n/a", "n/a"]]),
    ]
    C.publish("bench_memory", block, args)


if __name__ == "__main__":
    main()

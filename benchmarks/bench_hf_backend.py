"""Benchmark 4: the hf backend's batched `num_return_sequences` against per-prompt loops.

    python benchmarks/bench_hf_backend.py            # full run, writes its block into BENCHMARKS.md
    python benchmarks/bench_hf_backend.py --quick    # small sanity run, prints only

All three use `HFBackend` (same model, same per-row sampler, same prompts, same token counts):

* per-sample loop: one `generate` call per candidate (batch 1, n=1), the naive way;
* per-prompt loop: one `generate` call per prompt with `num_return_sequences=N` (batch_size=1);
* batched: `--gen-batch` prompts per `generate` call, each with `num_return_sequences=N` (bonsynth's default).

The policy is a GPT-2 LM built from config (random weights rarely emit EOS, so every candidate runs to
`max_new_tokens` in every method: equal work). Prompts are hh-rlhf prompts (../shared) of mixed length.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import _common as C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model and data, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--gen-batch", type=int, default=8, help="prompts per generate() call in the batched method")
    C.add_model_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.n, args.max_new_tokens, args.n_layer, args.n_embd, args.n_head, args.repeats = (
            4, 4, 8, 2, 128, 2, 1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from bench_e2e_vllm import hh_prompts

    from bonsynth.data.records import PromptRecord
    from bonsynth.demo.models import save_model, tiny_causal_lm
    from bonsynth.generate.backends.base import SamplingConfig
    from bonsynth.generate.backends.hf import HFBackend

    loads = [C.load_avg()]
    corpus, source = C.corpus()
    tok = C.tokenizer_for(corpus)
    root = Path(tempfile.mkdtemp(prefix="bench_hf_"))
    policy = save_model(
        tiny_causal_lm(tok, seed=1, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=1024),
        tok, root / "policy",
    )
    texts = [p[-1500:] for p in hh_prompts(args.prompts)]  # the tail: prompts of mixed length, none huge
    records = [PromptRecord(id=f"p{i}", prompt=t) for i, t in enumerate(texts)]
    p_lens = [len(tok(t)["input_ids"]) for t in texts]
    sampling = SamplingConfig(n=args.n, max_new_tokens=args.max_new_tokens, seed=0)
    single = replace(sampling, n=1)
    one = HFBackend(str(policy), device="cpu", batch_size=1)
    batched = HFBackend(str(policy), device="cpu", batch_size=args.gen_batch)
    counts: dict[str, int] = {}

    def count(name: str, results: list) -> None:
        counts[name] = sum(c.num_tokens for r in results for c in r.completions)

    def per_sample() -> None:
        out = []
        for rec in records:
            for j in range(args.n):
                out += one.generate([PromptRecord(id=f"{rec.id}/{j}", prompt=rec.prompt)], single)
        count("per-sample loop", out)

    methods = {
        "per-sample loop (n=1 per call)": per_sample,
        "per-prompt loop (num_return_sequences=N)": lambda: count("per-prompt", one.generate(records, sampling)),
        f"batched ({args.gen_batch} prompts × N per call)": lambda: count("batched", batched.generate(records, sampling)),
    }
    times = C.round_robin(methods, args.repeats, loads)
    loads.append(C.load_avg())
    med = {k: C.median(v) for k, v in times.items()}
    names = list(med)
    cands = len(records) * args.n
    rows = [[name, f"{sec:.2f}", f"{cands / sec:.1f}", f"{med[names[0]] / sec:.2f}×", f"{med[names[1]] / sec:.2f}×"]
            for name, sec in med.items()]
    block = [
        f"### 4. HF backend: batched num_return_sequences ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {C.machine(loads)}; torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, no GPU",
        f"- command: `{C.command()}`",
        f"- model: GPT-2 LM from config, {args.n_layer} layers × {args.n_embd} wide; {len(records)} prompts from "
        f"{source}, {min(p_lens)}–{max(p_lens)} tokens; N={args.n}; {args.max_new_tokens} new tokens per candidate "
        f"(generated tokens per method: {sorted(set(counts.values()))})",
        f"- median of {args.repeats} round-robin repeats after a warm-up",
        "",
        C.table(["method", "median s", "candidates/s", "vs per-sample loop", "vs per-prompt loop"], rows),
        "",
        "No numeric target in the issue; the table is the claim (batching prompts × N into one `generate` call).",
    ]
    C.publish("bench_hf_backend", block, args)


if __name__ == "__main__":
    main()

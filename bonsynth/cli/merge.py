"""`bonsynth merge CONFIG OUT`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--random-seed", type=int, default=None, help="Seed for DARE's random drop.")
@click.option("--out-shard-size", default="5B", show_default=True, help="Max output shard size (e.g. 5B, 500M).")
@click.option("--dtype", default=None, help="Override the config's dtype for the merge arithmetic.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True)
def merge(config: Path, out: Path, device: str, random_seed, out_shard_size: str, dtype, trust_remote_code: bool) -> None:
    """Merge models from a mergekit-style YAML (passthrough, linear, task_arithmetic, ties, dare_*, slerp).

    Reward models with mixed heads (none, 1-label, 2-label) merge into one scalar reward head.

    \b
    Example:
      bonsynth merge recipes/rewardblend-ties.yaml merged-rm/
    """
    from bonsynth.merge import run_merge

    summary = run_merge(
        config, out, device=device, random_seed=random_seed, out_shard_size=out_shard_size, dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    click.echo(f"merged {summary['num_tensors']} tensors with {summary['merge_method']} -> {out}")

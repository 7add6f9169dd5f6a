"""`bonsynth merge CONFIG OUT`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--random-seed", type=int, default=None, help="Seed for DARE's random drop (default: drawn and reported).")
@click.option("--out-shard-size", default="5B", show_default=True, help="Max output shard size (e.g. 5B, 500M).")
@click.option("--dtype", default=None, help="Override the config's dtype for the merge arithmetic.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, hidden=True,
              help="No effect: merging runs no model code (kept so that old scripts still run).")
@click.option("--allow-unsafe-weights", is_flag=True,
              help="Also read pickle pytorch_model.bin weights (torch.load, weights_only), as in every other command.")
@click.option("--allow-pickle", is_flag=True, hidden=True, help="Deprecated name of --allow-unsafe-weights.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--calibrate-data", type=click.Path(path_type=Path), default=None,
              help="Responses to score with the merged RM (any file `rm score` reads): its measured reward mean/std "
                   "go into bonsynth_rm.json (without it they are unmeasured placeholders, 0 / 1).")
def merge(config: Path, out: Path, device: str, random_seed, out_shard_size: str, dtype, trust_remote_code: bool,
          allow_unsafe_weights: bool, allow_pickle: bool, overwrite: bool, calibrate_data: Path | None) -> None:
    """Merge models from a mergekit-style YAML (passthrough, linear, task_arithmetic, ties, dare_*, slerp).

    Reward models with mixed heads (none, 1-label, 2-label) merge into one scalar reward head.

    \b
    Example:
      bonsynth merge recipes/rewardblend-ties.yaml merged-rm/
    """
    from bonsynth.merge import MergeOptions, run_merge

    if allow_pickle:
        click.echo("note: --allow-pickle is deprecated; use --allow-unsafe-weights", err=True)
    options = MergeOptions(device=device, random_seed=random_seed, out_shard_size=out_shard_size, dtype=dtype,
                           allow_unsafe_weights=allow_unsafe_weights or allow_pickle, overwrite=overwrite,
                           calibrate_data=calibrate_data)
    summary = run_merge(config, out, options)
    for note in summary.get("notes", []):
        click.echo(f"note: {note}", err=True)
    if summary.get("left_out"):
        click.echo(f"note: left out LM head tensors (not part of a reward model): {', '.join(summary['left_out'])}",
                   err=True)
    if summary.get("converted_heads"):
        click.echo(f"note: 2-label heads converted to logit1 - logit0: {', '.join(summary['converted_heads'])}", err=True)
    if summary.get("averaged_without_base"):
        click.echo("note: absent from the base, averaged over the fine-tuned models: "
                   f"{', '.join(summary['averaged_without_base'])}", err=True)
    if summary.get("legacy_buffers_left_out"):
        n = len(summary["legacy_buffers_left_out"])
        click.echo(f"note: left out {n} legacy buffer(s) that transformers recomputes, e.g. "
                   f"{summary['legacy_buffers_left_out'][0]}", err=True)
    if "random_seed" in summary:
        click.echo(f"random seed: {summary['random_seed']}", err=True)
    kind = f" ({summary['architecture']}, reward model)" if summary.get("reward_model") else ""
    click.echo(f"merged {summary['num_tensors']} tensors with {summary['merge_method']} -> {out}{kind}")
    cal = summary.get("calibration")
    if cal:
        click.echo(f"calibrated on {cal['num_texts']} responses from {cal['data']}: reward_mean "
                   f"{cal['reward_mean']:.6g}, reward_std {cal['reward_std']:.6g}")
    elif summary.get("reward_model"):
        click.echo("note: reward_mean/std are unmeasured placeholders (0 / 1); measure them with "
                   f"`bonsynth rm calibrate {out} --data FILE` (or --calibrate-data) before mixing this RM", err=True)

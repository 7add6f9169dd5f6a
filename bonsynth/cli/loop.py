"""`bonsynth loop RECIPE [--resume] [--rounds N]`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--resume", is_flag=True, help="Continue the loop in the recipe's out directory from its last stage.")
@click.option("--rounds", type=int, default=None, help="Override the recipe's number of rounds (e.g. to extend a loop).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Override the recipe's loop directory.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def loop(recipe: Path, resume: bool, rounds: int | None, out: Path | None, quiet: bool) -> None:
    """Run rounds of best-of-N generation, a policy update (SFT or DPO) and an eval, as a recipe says.

    Each round writes round_XXX/ (datasets, policy checkpoint, metrics, report.md, plots) under the loop
    directory; a killed loop continues with --resume.

    \b
    Examples:
      bonsynth loop recipes/quickstart.yaml
      bonsynth loop recipes/raft-sft.yaml --resume --rounds 5
    """
    from bonsynth.loop import run_loop

    summary = run_loop(recipe, resume=resume, rounds=rounds, out=out, show_progress=not quiet)
    means = ", ".join(f"{x:+.4f}" for x in summary["reward_mean_by_round"])
    click.echo(f"loop: {summary['rounds_complete']} of {summary['rounds_planned']} rounds complete in {summary['out']}")
    click.echo(f"eval reward mean by round (base first): {means}")
    click.echo(f"report: {Path(summary['out']) / 'report.md'}")

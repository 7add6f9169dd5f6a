"""`bonsynth quickstart`: the main job on the embedded offline default."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/quickstart"), show_default=True)
@click.option("--n", "n", type=int, default=8, show_default=True, help="Candidates per prompt.")
@click.option("--limit", type=int, default=None, help="Use only the first LIMIT prompts.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rebuild", is_flag=True, help="Rebuild the cached demo models.")
def quickstart(out: Path, n: int, limit, seed: int, rebuild: bool) -> None:
    """Run best-of-N end to end, offline, with demo-size models built from the sample data.

    The first run trains a tiny policy and a tiny RM on data/ (cached, a minute or two on a laptop CPU);
    then it runs the same pipeline as `bonsynth generate` and prints a summary.

    \b
    Example:
      bonsynth quickstart --out runs/demo
    """
    from bonsynth.demo.quickstart import run_quickstart

    run_quickstart(out, n=n, limit=limit, seed=seed, rebuild=rebuild)

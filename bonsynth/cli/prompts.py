"""`bonsynth prompts ...`: make prompt sets (`synth`: grow one from a few seeds with the policy)."""

from __future__ import annotations

import click

from bonsynth.cli.options import build_config, config_kwargs, config_options
from bonsynth.data.synth import FilterSettings
from bonsynth.generate.synth import SynthConfig


@click.group()
def prompts() -> None:
    """Prompt sets: synthesise new prompts from a few seeds."""


@prompts.command()
@config_options(SynthConfig)
@config_options(FilterSettings)
@click.option("--gen-batch-size", type=int, default=None, help="hf backend: prompts per generate() call.")
@click.option("--base-url", default=None, help="openai backend (default: $BONSYNTH_OPENAI_BASE_URL or $OPENAI_BASE_URL).")
@click.option("--concurrency", type=int, default=None, help="openai backend: requests in flight.")
def synth(**kw) -> None:
    """Grow a prompt set from a few seeds: few-shot requests to the policy, filtered and deduplicated.

    Writes OUT (a prompts file `bonsynth generate --prompts` reads as is, each row with the seed_ids it was
    made from) and OUT's manifest (template sha256, model, seed, counts per filter).

    \b
    Example:
      bonsynth prompts synth --seeds seeds.jsonl --policy HuggingFaceTB/SmolLM2-135M-Instruct \\
          --num 1000 --out synth.jsonl
    """
    from bonsynth.generate.synth import output_paths, run_synth

    knobs = {key: kw.pop(opt) for opt, key in (("gen_batch_size", "batch_size"), ("base_url", "base_url"),
                                              ("concurrency", "concurrency"))}
    backend_options = {key: value for key, value in knobs.items() if value is not None}
    filters = build_config(FilterSettings, **config_kwargs(FilterSettings, kw))
    cfg = build_config(SynthConfig, **config_kwargs(SynthConfig, kw), filters=filters, backend_options=backend_options)
    manifest = run_synth(cfg)
    counts = manifest["counts"]
    dropped = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "accepted" and v)
    click.echo(f"wrote {manifest['num_written']} prompts to {cfg.out} from {manifest['candidates']} candidates "
               f"({manifest['requests']} requests); dropped: {dropped or 'none'}")
    click.echo(f"  manifest: {output_paths(cfg.out)[1]}")
    if manifest.get("warning"):
        click.echo(f"warning: {manifest['warning']}", err=True)

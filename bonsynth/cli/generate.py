"""`bonsynth generate`: best-of-N datasets."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.cli.options import GroupedCommand, build_config, config_kwargs, config_options, part_option
from bonsynth.errors import ConfigError
from bonsynth.generate.pipeline import GROUPS, GenerateConfig
from bonsynth.settings import comma_list

_numbers = comma_list(float, "numbers", "0.7,0.3")
backend_option, engine_option, judge_option = (part_option(g) for g in ("backend", "engine", "judge"))


def parse_weights(value: str | None, flag: str = "--reward-weights") -> list[float] | None:
    """--reward-weights / --judge-weights as numbers (None when not given)."""
    return None if value is None else _numbers(value, flag)


@click.command(cls=GroupedCommand, part_order=GROUPS + ("engine", "judge"))
@config_options(GenerateConfig)
@backend_option("--gen-batch-size", type=int, default=None, help="hf backend: prompts per generate() call.")
@backend_option("--tensor-parallel-size", type=int, default=None, help="vllm backend: GPUs per engine.")
@backend_option("--gpu-memory-utilization", type=float, default=None, help="vllm backend.")
@backend_option("--base-url", default=None, help="openai backend (default: $BONSYNTH_OPENAI_BASE_URL or $OPENAI_BASE_URL).")
@backend_option("--concurrency", type=int, default=None, help="openai backend: requests in flight.")
@engine_option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data actor pools (needs bonsynth[ray]), same outputs.")
@engine_option("--workers", type=int, default=None, help="ray engine: policy replicas (default 2).")
@engine_option("--gpus-per-worker", type=float, default=None,
              help="ray engine: GPUs per policy replica (default 0 = CPU; >1 = tensor parallel with vllm).")
@engine_option("--address", default=None, help="ray engine: Ray cluster to join (e.g. auto or ray://head:10001); "
              "default: $RAY_ADDRESS, else a local cluster.")
@judge_option("--judge", "judges", multiple=True,
              help="Also score every candidate with this gold judge (RM directory, or openai:MODEL at "
                   "$BONSYNTH_OPENAI_BASE_URL/$OPENAI_BASE_URL) and write judge.json/md/png into OUT, as "
                   "`bonsynth judge` does; selection still uses only --reward. Repeatable.")
@judge_option("--judge-weights", default=None, help="Comma-separated weights for several --judge models.")
def generate(**kw) -> None:
    """Generate N candidates per prompt, score them with the RM(s), select, and write datasets.

    Writes OUT/candidates.jsonl, OUT/sft.jsonl, OUT/dpo.jsonl and OUT/manifest.json.

    \b
    Example:
      bonsynth generate --policy Qwen/Qwen2.5-0.5B-Instruct --reward rm/ --prompts prompts.jsonl \\
          --n 8 --select pairs --min-margin 0.5 --out out/
    """
    from bonsynth.generate.pipeline import run_generate
    from bonsynth.generate.report import summary_table

    fields = config_kwargs(GenerateConfig, kw)
    if not fields["show_progress"]:  # transformers' own "Loading weights" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    judge_cfg = _judge_config(kw.pop("judges"), kw.pop("judge_weights"), fields)
    engine = kw.pop("engine")
    ray_kw = {key: kw.pop(key) for key in ("workers", "gpus_per_worker", "address")}
    if engine == "local":
        given = [f"--{k.replace('_', '-')}" for k, v in ray_kw.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --engine ray")
    backend_options = {}
    for opt, key in (("gen_batch_size", "batch_size"), ("tensor_parallel_size", "tensor_parallel_size"),
                     ("gpu_memory_utilization", "gpu_memory_utilization"), ("base_url", "base_url"),
                     ("concurrency", "concurrency")):
        value = kw.pop(opt)
        if value is not None:
            backend_options[key] = value
    cfg = build_config(GenerateConfig, **fields, backend_options=backend_options)
    if engine == "ray":
        from bonsynth.generate.ray_engine import run_generate_ray

        manifest = run_generate_ray(cfg, **{k: v for k, v in ray_kw.items() if v is not None})
    else:
        manifest = run_generate(cfg)
    click.echo(summary_table(manifest, cfg.out))
    if judge_cfg is not None:
        _judge_after(judge_cfg)


def _judge_config(judges: tuple[str, ...], weights: str | None, kw: dict):
    """The `bonsynth judge` config for `generate --judge`, checked (and the judge models found) before the run
    starts, so a typo fails in one line before hours of generation, not after."""
    if not judges:
        if weights is not None:
            raise ConfigError("--judge-weights needs --judge")
        return None
    from bonsynth.judge.run import JudgeConfig, check_judge_sources

    cfg = build_config(JudgeConfig, run_dir=str(kw["out"]), judges=list(judges),
                       judge_weights=parse_weights(weights, "--judge-weights"), device=kw["device"],
                       dtype=kw["reward_dtype"] or kw["dtype"], prefix_sharing=kw["prefix_sharing"],
                       trust_remote_code=kw["trust_remote_code"], allow_unsafe_weights=kw["allow_unsafe_weights"])
    check_judge_sources(cfg)
    return cfg


def _judge_after(cfg) -> None:
    """Judge the finished run in OUT (a pass over candidates.jsonl after generation; the run's files and its
    fingerprint are untouched, so a judge never changes what the run wrote or whether it resumes)."""
    from bonsynth.errors import BonsynthError
    from bonsynth.judge.report import write_report
    from bonsynth.judge.run import judge_run

    try:
        report = judge_run(cfg)
        write_report(report, cfg.run_dir)
    except BonsynthError as e:
        raise type(e)(f"the run in {cfg.run_dir} is complete, but judging it failed: {e} (rerun only the judge "
                      f"with `bonsynth judge {cfg.run_dir} --judge ...`)") from e
    for w in report["warnings"]:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"gold judge {report['judge']['name']}: {report['verdict']}")
    click.echo(f"  {cfg.run_dir}/judge.json  {cfg.run_dir}/judge.md  {cfg.run_dir}/judge.png")


@click.command()
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Merged output directory.")
@click.option("--prompts", default=None, help="The prompts file, if not at the path the shards recorded.")
def gather(shard_dirs: tuple[Path, ...], out: Path, prompts) -> None:
    """Merge the outputs of `generate --shard I/K` jobs; checks every prompt appears exactly once.

    \b
    Example:
      for i in 0 1 2 3; do bonsynth generate ... --shard $i/4 --out shards/$i; done
      bonsynth gather shards/0 shards/1 shards/2 shards/3 --out merged/
    """
    from bonsynth.generate.gather import gather as gather_shards
    from bonsynth.generate.report import summary_table

    manifest = gather_shards(list(shard_dirs), out, prompts=prompts)
    click.echo(summary_table(manifest, out))


EXTRA_COMMANDS = (gather,)

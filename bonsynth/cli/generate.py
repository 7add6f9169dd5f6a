"""`bonsynth generate`: best-of-N datasets."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.cli.rm import PREFIX_SHARING, PREFIX_SHARING_HELP, UNSAFE_WEIGHTS_HELP
from bonsynth.errors import ConfigError


def _weights(value: str | None, flag: str = "--reward-weights") -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {value!r}") from None


def _share(value: str | None, flag: str) -> float | None:
    """A number given as text, so a typo is one `error:` line naming the flag (not click's usage block)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{flag} must be a number, e.g. 0.25 (got {value!r})") from None


@click.command()
@click.option("--policy", required=True, help="Policy model: local path or hub id (or the served model name for openai).")
@click.option("--reward", "rewards", required=True, multiple=True, help="Reward model directory; repeat for several.")
@click.option("--reward-weights", default=None, help="Comma-separated weights for several RMs, e.g. 0.7,0.3.")
@click.option("--prompts", required=True, help="Prompts file (jsonl/json/parquet/save_to_disk folder).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--n", "n", type=int, default=4, show_default=True, help="Candidates per prompt.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf", "openai"]), default="auto", show_default=True,
              help="auto: vllm when installed with a GPU, else hf.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop", multiple=True, help="Stop string; repeatable.")
@click.option("--select", "select", default="best", show_default=True,
              help="best: the best candidate of each prompt as an SFT row (sft.jsonl); top-k:K: the K best; "
                   "pairs: only a best-vs-worst DPO pair per prompt (dpo.jsonl), no SFT rows.")
@click.option("--write-pairs", is_flag=True,
              help="With best or top-k:K: also write each prompt's best-vs-worst DPO pair to dpo.jsonl.")
@click.option("--min-reward", type=float, default=None, help="Never select a candidate below this reward.")
@click.option("--min-margin", type=float, default=None,
              help="Skip a DPO pair whose reward margin is below this (needs pairs: --select pairs or --write-pairs).")
@click.option("--max-nonfinite", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of the run's candidates that may get a NaN/inf reward (never selected, written as null) "
                   "before the run stops with an error.")
@click.option("--prune-at", default=None,
              help="Speculative rejection: comma-separated token counts (e.g. 16,48) at which the partial replies "
                   "are scored and the weakest stopped; needs --prune-keep.")
@click.option("--prune-keep", default=None,
              help="Share of the running candidates kept at each --prune-at point (ceil, at least 1), e.g. 0.25; "
                   "alone it prunes once, at max-new-tokens // 8.")
@click.option("--dedup", is_flag=True, help="Drop exact and near-duplicate candidates before selecting.")
@click.option("--length-normalize", is_flag=True, help="Rank candidates by reward per token.")
@click.option("--long-prompts", "long_prompt", type=click.Choice(["truncate", "skip"]), default="truncate",
              show_default=True, help="A prompt longer than the context: left-truncate it, or skip it (reported either way).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Prompts per durable batch.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in OUT.")
@click.option("--format", "prompt_format", type=click.Choice(["auto", "prompts"]), default="auto", show_default=True)
@click.option("--limit", type=int, default=None, help="Use only the first LIMIT prompts.")
@click.option("--skip-invalid", is_flag=True,
              help="Drop prompt rows that fail validation (each printed as file:line:field, listed in the "
                   "manifest) instead of stopping at the first.")
@click.option("--reward-engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="Score with bonsynth's engine (hf) or vLLM's pooling runner (vllm).")
@click.option("--device", default="auto", show_default=True, help="Device for the hf backend and the RMs.")
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on a GPU, fp32 on the CPU.")
@click.option("--reward-dtype", default=None,
              help="dtype of the reward models (default: --dtype), e.g. bfloat16 RMs beside a float32 policy.")
@click.option("--prefix-sharing", type=PREFIX_SHARING, default="auto", show_default=True, help=PREFIX_SHARING_HELP)
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
              help="Run model code from the model directories (policy and RMs).")
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP + " Applies to the policy and the RMs.")
@click.option("--gen-batch-size", type=int, default=None, help="hf backend: prompts per generate() call.")
@click.option("--tensor-parallel-size", type=int, default=None, help="vllm backend: GPUs per engine.")
@click.option("--gpu-memory-utilization", type=float, default=None, help="vllm backend.")
@click.option("--max-model-len", type=int, default=None,
              help="vllm backend: context length, prompt plus new tokens (default: the model's).")
@click.option("--enforce-eager", is_flag=True, help="vllm backend: no CUDA graphs (faster start, less GPU memory).")
@click.option("--base-url", default=None, help="openai backend (default: $BONSYNTH_OPENAI_BASE_URL or $OPENAI_BASE_URL).")
@click.option("--concurrency", type=int, default=None, help="openai backend: requests in flight.")
@click.option("--shard", default=None, help="I/K: process only shard I (0-based) of K, for array jobs; merge with `bonsynth gather`.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data actor pools (needs bonsynth[ray]), same outputs.")
@click.option("--workers", type=int, default=None, help="ray engine: policy replicas (default 2).")
@click.option("--gpus-per-worker", type=float, default=None,
              help="ray engine: GPUs per policy replica (default 0 = CPU; >1 = tensor parallel with vllm).")
@click.option("--address", default=None, help="ray engine: Ray cluster to join (e.g. auto or ray://head:10001); "
              "default: $RAY_ADDRESS, else a local cluster.")
@click.option("--judge", "judges", multiple=True,
              help="Also score every candidate with this gold judge (RM directory, or openai:MODEL at "
                   "$BONSYNTH_OPENAI_BASE_URL/$OPENAI_BASE_URL) and write judge.json/md/png into OUT, as "
                   "`bonsynth judge` does; selection still uses only --reward. Repeatable.")
@click.option("--judge-weights", default=None, help="Comma-separated weights for several --judge models.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate(**kw) -> None:
    """Generate N candidates per prompt, score them with the RM(s), select, and write datasets.

    Writes OUT/candidates.jsonl, OUT/sft.jsonl, OUT/dpo.jsonl and OUT/manifest.json.

    \b
    Example:
      bonsynth generate --policy Qwen/Qwen2.5-0.5B-Instruct --reward rm/ --prompts prompts.jsonl \\
          --n 8 --select pairs --min-margin 0.5 --out out/
    """
    from bonsynth.generate.pipeline import GenerateConfig, run_generate
    from bonsynth.generate.prune import parse_points
    from bonsynth.generate.report import summary_table

    if kw["quiet"]:  # transformers' own "Loading weights" bars too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    judge_cfg = _judge_config(kw.pop("judges"), kw.pop("judge_weights"), kw)
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
    cfg = GenerateConfig(
        policy=kw["policy"], rewards=list(kw["rewards"]), reward_weights=_weights(kw["reward_weights"]),
        prompts=kw["prompts"], out=str(kw["out"]), n=kw["n"], backend=kw["backend"],
        temperature=kw["temperature"], top_p=kw["top_p"], max_new_tokens=kw["max_new_tokens"], seed=kw["seed"],
        stop=list(kw["stop"]), long_prompt=kw["long_prompt"], select=kw["select"], write_pairs=kw["write_pairs"],
        min_reward=kw["min_reward"], min_margin=kw["min_margin"], max_nonfinite=kw["max_nonfinite"],
        skip_invalid=kw["skip_invalid"],
        dedup=kw["dedup"], length_normalize=kw["length_normalize"], batch_size=kw["batch_size"],
        resume=kw["resume"], device=kw["device"], dtype=kw["dtype"], prompt_format=kw["prompt_format"],
        limit=kw["limit"], reward_engine=kw["reward_engine"], shard=kw["shard"], backend_options=backend_options, show_progress=not kw["quiet"],
        reward_dtype=kw["reward_dtype"], prefix_sharing=kw["prefix_sharing"], trust_remote_code=kw["trust_remote_code"],
        allow_unsafe_weights=kw["allow_unsafe_weights"], max_model_len=kw["max_model_len"],
        enforce_eager=kw["enforce_eager"], prune_at=parse_points(kw["prune_at"]),
        prune_keep=_share(kw["prune_keep"], "--prune-keep"),
    )
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

    cfg = JudgeConfig(run_dir=str(kw["out"]), judges=list(judges), judge_weights=_weights(weights, "--judge-weights"),
                      device=kw["device"], dtype=kw["reward_dtype"] or kw["dtype"], prefix_sharing=kw["prefix_sharing"],
                      trust_remote_code=kw["trust_remote_code"], allow_unsafe_weights=kw["allow_unsafe_weights"])
    cfg.validate()
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

"""`bonsynth rm {slice,train,eval,score,calibrate}`."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.cli.common import echo_json
from bonsynth.cli.options import build_config, config_kwargs, config_options
from bonsynth.rm.train import SKIP_INVALID_HELP, RMTrainConfig
from bonsynth.settings import PREFIX_SHARING_HELP, PREFIX_SHARING_MODES, UNSAFE_WEIGHTS_HELP

FORMATS = click.Choice(["auto", "pairwise", "binary", "ranked", "prompts"])
PREFIX_SHARING = click.Choice(list(PREFIX_SHARING_MODES))


@click.group()
def rm() -> None:
    """Reward models: slice a base, train (pairwise, binary, ranked), evaluate, score.

    \b
    Example:
      bonsynth rm slice --base gpt2 --layers 0:8 --out gpt2-8l
      bonsynth rm train --base gpt2-8l --data pairs.jsonl --objective pairwise --out rm-pairs
    """


@rm.command("slice")
@click.option("--base", required=True, help="Path or hub id of a causal LM or encoder.")
@click.option("--layers", required=True, help="Layer range to keep, START:END (END exclusive), e.g. 0:8.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out (once the new model is complete).")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, hidden=True,
              help="No effect: slicing runs no model code (kept so that old scripts still run).")
def slice_cmd(base: str, layers: str, out: Path, overwrite: bool, trust_remote_code: bool) -> None:
    """Keep a range of layers of a model and save it (same code as a mergekit passthrough merge).

    \b
    Example:
      bonsynth rm slice --base gpt2 --layers 0:8 --out gpt2-8l
    """
    from bonsynth.rm.slice import slice_model

    info = slice_model(base, layers, out, overwrite=overwrite)
    click.echo(f"wrote {out} ({info['num_layers']} layers, {info['num_parameters'] / 1e6:.1f}M parameters)")


@rm.command("train")
@config_options(RMTrainConfig)
def train_cmd(**kw) -> None:
    """Train a reward model.

    \b
    Example:
      bonsynth rm train --base gpt2-8l --data data/pairs.jsonl --objective pairwise --out rm-pairs --epochs 2
      bonsynth rm train --base demo:minilm --data data/pairs.jsonl --objective pairwise --out rm-warm \\
          --seeds 0,1,2 --eval-every epoch --early-stopping 2 --epochs 3
    """
    from bonsynth.rm.train import train_reward_model

    cfg = build_config(RMTrainConfig, **config_kwargs(RMTrainConfig, kw))
    if cfg.seeds is not None:
        from bonsynth.merge.warm import train_warm

        echo_json(train_warm(cfg))
    else:
        echo_json(train_reward_model(cfg))


@rm.command("eval")
@click.option("--model", required=True, help="Reward model directory.")
@click.option("--data", "data", required=True, multiple=True, help="Eval data file(s); one result per file.")
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--max-length", type=int, default=None, help="Default: the length the RM was trained with.")
@click.option("--k", "ndcg_k", type=int, default=None, help="k for NDCG@k on ranked data (default: group size).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file on stdout.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
              help="Run Python code shipped in the model directory (custom architectures).")
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
@click.option("--skip-invalid", is_flag=True, help=SKIP_INVALID_HELP)
def eval_cmd(model: str, data: tuple[str, ...], fmt: str, batch_size: int, max_length, ndcg_k, as_json: bool,
             trust_remote_code: bool, allow_unsafe_weights: bool, skip_invalid: bool) -> None:
    """Evaluate a reward model: accuracy, loss, rewards, margin (pairwise); AUC (binary); NDCG@k (ranked).

    \b
    Example:
      bonsynth rm eval --model rm-pairs --data data/pairs.jsonl --json
    """
    import json

    from bonsynth.rm.evaluate import evaluate_files

    results = evaluate_files(model, list(data), fmt=fmt, batch_size=batch_size, max_length=max_length, ndcg_k=ndcg_k,
                             trust_remote_code=trust_remote_code, allow_unsafe_weights=allow_unsafe_weights,
                             skip_invalid=skip_invalid)
    for res in results:
        if as_json:
            click.echo(json.dumps(res, sort_keys=True))
        else:
            click.echo(f"== {res['file']} ({res['kind']}, {res['num_examples']} examples)")
            for key in sorted(res):
                if key not in ("file", "kind", "num_examples"):
                    click.echo(f"  {key:28s} {res[key]}")


@rm.command("score")
@click.option("--model", required=True, help="Reward model directory.")
@click.option("--input", "input_path", required=True, help="Records to score (jsonl/json/parquet).")
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path), help="Output jsonl.")
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on GPU, fp32 on CPU.")
@click.option("--max-length", type=int, default=None)
@click.option("--token-budget", type=int, default=None, help="Max padded tokens per batch (default: by device).")
@click.option("--prefix-sharing", type=PREFIX_SHARING, default="auto", show_default=True, help=PREFIX_SHARING_HELP)
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
              help="Run Python code shipped in the model directory (custom architectures).")
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
@click.option("--skip-invalid", is_flag=True, help=SKIP_INVALID_HELP)
def score_cmd(model: str, input_path: str, output_path: Path, fmt: str, device: str, dtype: str, max_length,
              token_budget, prefix_sharing: str, trust_remote_code: bool, allow_unsafe_weights: bool,
              skip_invalid: bool) -> None:
    """Score records with a reward model; writes each record back with a `reward` field.

    \b
    Example:
      bonsynth rm score --model rm-pairs --input candidates.jsonl --output scored.jsonl
    """
    from bonsynth.data.normalize import Skipped
    from bonsynth.rm.prefix import sharing_summary
    from bonsynth.rm.score_file import score_file

    skipped = Skipped()
    stats: dict = {}
    ran: dict = {}
    n = score_file(model, input_path, output_path, fmt=fmt, device=device, dtype=dtype, max_length=max_length,
                   token_budget=token_budget, prefix_sharing=prefix_sharing, trust_remote_code=trust_remote_code,
                   allow_unsafe_weights=allow_unsafe_weights, skip_invalid=skip_invalid, skipped=skipped, stats=stats,
                   report=ran)
    notes = [f"prefix sharing: {sharing_summary(ran['prefix_sharing'])}"]
    if stats.get("num_nonfinite"):
        notes.append(f"{stats['num_nonfinite']} non-finite rewards written as null")
    if skip_invalid:
        shown = ", ".join(str(line) for line in skipped.lines[: Skipped.SHOWN])
        more = f", ... and {skipped.count - Skipped.SHOWN} more" if skipped.count > Skipped.SHOWN else ""
        notes.append(f"skipped {skipped.count} invalid rows" + (f": lines {shown}{more}" if skipped.count else ""))
    click.echo(f"scored {n} records -> {output_path}; " + "; ".join(notes))


@rm.command("calibrate")
@click.argument("model")
@click.option("--data", "data", required=True, help="Responses to score (any file `rm score` reads).")
@click.option("--format", "fmt", type=FORMATS, default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on GPU, fp32 on CPU.")
@click.option("--max-length", type=int, default=None, help="Default: the length the RM was trained with.")
@click.option("--token-budget", type=int, default=None, help="Max padded tokens per batch (default: by device).")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True,
              help="Run Python code shipped in the model directory (custom architectures).")
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
def calibrate_cmd(model: str, data: str, fmt: str, device: str, dtype: str, max_length, token_budget,
                  trust_remote_code: bool, allow_unsafe_weights: bool) -> None:
    """Measure the reward mean/std on real responses and store them in MODEL/bonsynth_rm.json.

    Ensembles z-normalise each RM with these; a merged RM has only placeholders (0 / 1) until calibrated.

    \b
    Example:
      bonsynth rm calibrate merged-rm --data data/pairs.jsonl
    """
    from bonsynth.rm.calibrate import calibrate_reward_model

    res = calibrate_reward_model(model, data, fmt=fmt, device=device, dtype=dtype, max_length=max_length,
                                 token_budget=token_budget, trust_remote_code=trust_remote_code,
                                 allow_unsafe_weights=allow_unsafe_weights)
    click.echo(f"calibrated {model} on {res['num_texts']} responses from {data}: "
               f"reward_mean {res['reward_mean']:.6g}, reward_std {res['reward_std']:.6g} -> {res['meta_file']}")

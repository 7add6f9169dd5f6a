"""`bonsynth prompts ...`: make prompt sets (`synth`: grow one from a few seeds with the policy)."""

from __future__ import annotations

from pathlib import Path

import click

from bonsynth.settings import UNSAFE_WEIGHTS_HELP


@click.group()
def prompts() -> None:
    """Prompt sets: synthesise new prompts from a few seeds."""


@prompts.command()
@click.option("--seeds", required=True, help="Seed prompts (any prompts file `bonsynth generate` reads: prompt or messages).")
@click.option("--policy", required=True, help="The model that writes the new prompts: local path or hub id "
              "(or the served model name for openai).")
@click.option("--num", "num", type=int, required=True, help="How many new prompts to write (K).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output prompts JSONL; its manifest goes beside it as NAME.manifest.json.")
@click.option("--backend", type=click.Choice(["auto", "vllm", "hf", "openai"]), default="auto", show_default=True,
              help="auto: vllm when installed with a GPU, else hf.")
@click.option("--template", default=None, help="Request template file with {examples} (and {card} for chat seeds); "
              "default: the one shipped in bonsynth/data/synth_prompts/.")
@click.option("--shots", type=int, default=3, show_default=True, help="Seed examples shown in each request.")
@click.option("--per-request", type=int, default=1, show_default=True, help="Completions per request.")
@click.option("--max-similarity", type=float, default=0.7, show_default=True,
              help="Drop a prompt whose Jaccard similarity (word --ngram sets) with a seed or an earlier "
              "kept prompt is >= this.")
@click.option("--ngram", type=int, default=2, show_default=True,
              help="Word n-grams for the similarity (2 = word pairs; 1 = word sets).")
@click.option("--min-words", type=int, default=3, show_default=True, help="Drop prompts with fewer words.")
@click.option("--max-words", type=int, default=256, show_default=True, help="Drop prompts with more words.")
@click.option("--no-language-check", is_flag=True, help="Keep prompts that fail the cheap same-language-as-the-seeds check.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Requests per durable batch.")
@click.option("--max-requests", type=int, default=None, help="Stop after this many requests even if fewer than "
              "--num prompts passed (default 20 x --num).")
@click.option("--skip-invalid", is_flag=True, help="Drop seed rows that fail validation (listed in the manifest) "
              "instead of stopping at the first.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same settings into OUT.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT (or an interrupted run's partial file).")
@click.option("--device", default="auto", show_default=True, help="Device for the hf backend.")
@click.option("--dtype", default="auto", show_default=True, help="auto = bf16 on a GPU, fp32 on the CPU.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True)
@click.option("--allow-unsafe-weights", is_flag=True, help=UNSAFE_WEIGHTS_HELP)
@click.option("--gen-batch-size", type=int, default=None, help="hf backend: prompts per generate() call.")
@click.option("--base-url", default=None, help="openai backend (default: $BONSYNTH_OPENAI_BASE_URL or $OPENAI_BASE_URL).")
@click.option("--concurrency", type=int, default=None, help="openai backend: requests in flight.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(**kw) -> None:
    """Grow a prompt set from a few seeds: few-shot requests to the policy, filtered and deduplicated.

    Writes OUT (a prompts file `bonsynth generate --prompts` reads as is, each row with the seed_ids it was
    made from) and OUT's manifest (template sha256, model, seed, counts per filter).

    \b
    Example:
      bonsynth prompts synth --seeds seeds.jsonl --policy HuggingFaceTB/SmolLM2-135M-Instruct \\
          --num 1000 --out synth.jsonl
    """
    from bonsynth.data.synth import FilterSettings
    from bonsynth.generate.synth import SynthConfig, output_paths, run_synth

    backend_options = {key: kw[opt] for opt, key in (("gen_batch_size", "batch_size"), ("base_url", "base_url"),
                                                    ("concurrency", "concurrency")) if kw[opt] is not None}
    cfg = SynthConfig(
        seeds=kw["seeds"], policy=kw["policy"], num=kw["num"], out=str(kw["out"]), backend=kw["backend"],
        template=kw["template"], shots=kw["shots"], per_request=kw["per_request"], seed=kw["seed"],
        temperature=kw["temperature"], top_p=kw["top_p"], max_new_tokens=kw["max_new_tokens"],
        batch_size=kw["batch_size"], max_requests=kw["max_requests"], skip_invalid=kw["skip_invalid"],
        resume=kw["resume"], overwrite=kw["overwrite"],
        filters=FilterSettings(min_words=kw["min_words"], max_words=kw["max_words"],
                               max_similarity=kw["max_similarity"], ngram=kw["ngram"],
                               language_check=not kw["no_language_check"]),
        device=kw["device"], dtype=kw["dtype"], trust_remote_code=kw["trust_remote_code"],
        allow_unsafe_weights=kw["allow_unsafe_weights"], backend_options=backend_options,
        show_progress=not kw["quiet"],
    )
    manifest = run_synth(cfg)
    counts = manifest["counts"]
    dropped = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "accepted" and v)
    click.echo(f"wrote {manifest['num_written']} prompts to {cfg.out} from {manifest['candidates']} candidates "
               f"({manifest['requests']} requests); dropped: {dropped or 'none'}")
    click.echo(f"  manifest: {output_paths(cfg.out)[1]}")
    if manifest.get("warning"):
        click.echo(f"warning: {manifest['warning']}", err=True)

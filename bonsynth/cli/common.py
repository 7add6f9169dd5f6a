"""What every command shares: user errors become one line on stderr and exit code 2 (a bonsynth bug: 1)."""

from __future__ import annotations

import os
import sys

import click

from bonsynth.errors import BonsynthError, user_error_line


def run_guarded(group: click.Group) -> None:
    """Run the click group; a `BonsynthError` anywhere prints `error: ...` and exits 2, with no traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (BonsynthError, OSError) as e:
        line = user_error_line(e)
        if line is None:
            raise
        click.echo(line[0], err=True)
        sys.exit(line[1])
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def echo_json(obj) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))

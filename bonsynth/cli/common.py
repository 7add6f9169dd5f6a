"""What every command shares: user errors become one line on stderr and exit code 2 (a bonsynth bug: 1)."""

from __future__ import annotations

import os
import sys

import click

from bonsynth.errors import REPORT_HINT, USER_IO_ERRNOS, BonsynthError, InternalError, describe_io_error


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
    except BonsynthError as e:
        # user errors exit 2; an InternalError (a bonsynth bug) exits 1 and asks for a report, still one line
        hint = f" ({REPORT_HINT})" if isinstance(e, InternalError) else ""
        click.echo(f"error: {e}{hint}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno not in USER_IO_ERRNOS:
            raise
        # A full disk or a forbidden path, wherever it surfaced: the user can fix it, so no traceback.
        click.echo(f"error: {describe_io_error(e)}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)


def echo_json(obj) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))

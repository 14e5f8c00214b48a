"""`datagen`: make datasets, and inspect, verify, preview and rebuild stores.

Each command module registers itself on `app` when imported (spaCy's pattern); library functions raise
DatagenError and only `main` turns errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from datagen.cli import balls, mnist, sense, stabilize, store_cmds  # noqa: F401  (importing registers them)
from datagen.cli._app import app
from datagen.errors import DatagenError, Interrupted

try:  # typer >= 0.22 ships its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on real click
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; every failure is one line on stderr: 2 for bad input, 1 for failed checks."""
    try:
        code = app(args=argv, prog_name="datagen", standalone_mode=False)  # Exit(n) comes back as n
    except NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else str(e))
        return 0
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
        return 130
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    except (UsageError, ClickException) as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return 2
    except DatagenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if code == 130:  # typer turns Ctrl-C into Exit(130), which comes back as 130
        print("error: interrupted", file=sys.stderr)
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(main())

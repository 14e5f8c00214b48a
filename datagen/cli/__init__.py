"""`datagen`: make datasets, and inspect, verify, preview and rebuild stores.

Each command module registers itself on `app` when imported (spaCy's pattern); library functions raise
DatagenError and only `main` turns errors into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from datagen.cli import balls, store_cmds  # noqa: E402,F401  (registration)
from datagen.cli._app import app
from datagen.errors import DatagenError


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="datagen", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        print("error: interrupted", file=sys.stderr)
        return 130
    except click.UsageError as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return 2
    except click.ClickException as e:
        print(f"error: {e.format_message()}", file=sys.stderr)
        return 2
    except DatagenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    sys.exit(main())

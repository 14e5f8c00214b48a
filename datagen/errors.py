"""The one exception type the CLI turns into a one-line message and exit code 2."""


class DatagenError(Exception):
    """A user-facing problem: bad arguments, missing or corrupt inputs, an output folder in the way."""

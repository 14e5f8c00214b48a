"""The exception types the CLI turns into one line: DatagenError (exit 2) and Interrupted (exit 130)."""


class DatagenError(Exception):
    """A user-facing problem: bad arguments, missing or corrupt inputs, an output folder in the way.

    The project's one base error type: the store format's `ManifestError`, the writers' `WriteError`,
    `pipelines.PipelineError` / `ShardError` and the recipes' `ConfigError` all derive from it.
    """


class Interrupted(Exception):
    """Ctrl-C stopped a job; the message says how to continue. The CLI prints it as one line, exit 130.

    Not a DatagenError: code that handles bad input must not swallow an interrupt.
    """

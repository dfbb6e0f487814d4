"""The `qsync` command: parser (every subcommand and option), commands (one function each, over the Python
API), output (tables, the run summary, exit codes), progress (the terminal progress bar), demo."""

from qsync.cli.main import entry, main

__all__ = ["entry", "main"]

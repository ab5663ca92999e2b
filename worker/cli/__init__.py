"""The ``orders`` command line: services, setup, client commands and the demo."""

from worker.cli.commands import app, main

__all__ = ["app", "main"]

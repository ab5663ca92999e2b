"""``python -m worker`` is the ``orders`` command."""

from worker.cli.commands import main

main()

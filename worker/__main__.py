"""``python -m worker`` is the ``orders`` command."""

from worker.cli import main

main()

"""The chaos run in short (``bench/chaos.py``): a few hundred orders through two API processes,
two worker hosts, beat and a webhook pool while every fault of the schedule is injected; the
audit (nothing lost, no duplicate upstream, no unexplained failure, consistent history, a
verified webhook for every final state, the ceiling held) must pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Its own PostgreSQL and Redis: the same run whichever database the pass tests.
pytestmark = [pytest.mark.slow, pytest.mark.db_free]


def test_short_chaos_run_passes_its_audit(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit status 0 means every audit line passed; the table is shown when it fails."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or not shutil.which("runuser"):
        pytest.skip("needs the PostgreSQL server binaries (initdb, pg_ctl) to start its own")
    from bench.chaos import main

    args = ["--orders", "400", "--duration-s", "50", "--outage-s", "8", "--big-batch", "100"]
    code = main([*args, "--settle-timeout-s", "150"])
    out = capsys.readouterr().out
    assert code == 0, out[-6000:]
    assert "audit PASSED" in out

"""Every ``orders`` command renders its ``--help`` whole: documented, and no text in square
brackets swallowed as rich markup (``orders --help`` once showed ``(extra: ````)`` for
``[flower]``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from worker.cli import app

BRACKETED = re.compile(r"\\?\[([^\[\]\n]*)\]")


Command = Any  # typer's vendored Command


def _commands(group: Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, group
    if isinstance(group, TyperGroup):
        for name, command in sorted(group.commands.items()):
            yield from _commands(command, (*path, name))


COMMANDS = list(_commands(get_command(app)))


def _texts(command: Command) -> list[str]:
    """The help texts written for ``command``: its own and its parameters'."""
    texts = [command.help or ""]
    texts += [getattr(param, "help", None) or "" for param in command.params]
    return [t for t in texts if t]


def brackets_written(text: str) -> list[str]:
    """The ``[...]`` spans of ``text`` as a reader should see them (markup escapes removed)."""
    return [f"[{m.group(1)}]" for m in BRACKETED.finditer(text)]


def render(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    # Rich draws boxes and wraps long lines: compare the words, not the layout.
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


def test_brackets_written_reads_escaped_and_plain_spans() -> None:
    """The helper the checks below rely on finds both ``\\[x]`` and ``[x]``."""
    assert brackets_written(r"extra: \[flower] or [dim]x[/dim]") == ["[flower]", "[dim]", "[/dim]"]
    assert brackets_written("no brackets") == []


def test_every_command_is_listed() -> None:
    """The walk below sees the sub-apps' commands too (``keys create``), not just the top."""
    paths = {path for path, _ in COMMANDS}
    assert ("flower",) in paths and ("keys", "create") in paths


@pytest.mark.parametrize(
    ("path", "command"), [pytest.param(p, c, id=" ".join(p) or "orders") for p, c in COMMANDS]
)
def test_help_is_documented_and_whole(path: tuple[str, ...], command: Command) -> None:
    """``orders ... --help`` shows the command's first line and every bracketed span written."""
    assert command.help, f"`orders {' '.join(path)}` has no help text"
    shown = render(path)
    first_line = " ".join(BRACKETED.sub(r"[\1]", command.help.strip().splitlines()[0]).split())
    assert first_line in shown, f"first line of the help not shown: {first_line!r}\n{shown}"
    for text in _texts(command):
        for span in brackets_written(text):
            assert span in shown, f"{span!r} swallowed in `orders {' '.join(path)} --help`"
    assert "````" not in shown

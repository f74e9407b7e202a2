"""Every `catalogan` command, lazy ones included, documents itself with an `Example:` in its help."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from scheduler.cli.root import LAZY_HELP, LAZY_SUBCOMMANDS, cli


def walk(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under `group`, loading lazy subcommands by name."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, f"{' '.join((*path, name))} does not load"
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, click.Context(command, parent=ctx, info_name=name), (*path, name))


COMMANDS = sorted(walk(cli, click.Context(cli, info_name="catalogan")), key=lambda item: item[0])


def test_the_walk_reaches_every_lazy_command() -> None:
    """Given the lazy registry, when the tree is walked, then every registered name was loaded."""
    top = {path[0] for path, _ in COMMANDS}
    assert set(LAZY_SUBCOMMANDS) <= top


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path))
def test_every_command_help_has_an_example(path: tuple[str, ...]) -> None:
    """Given a command, when its --help is printed, then it shows an `Example:` section."""
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="catalogan")
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`catalogan {' '.join(path)} --help` has no Example:"


LISTINGS = [path for path, _ in COMMANDS if path[-1] in {"ls", "workers"}]


@pytest.mark.parametrize("path", LISTINGS, ids=lambda path: " ".join(path))
def test_every_listing_offers_json(path: tuple[str, ...]) -> None:
    """Given a command that lists things, when its options are read, then one of them is --json."""
    command = dict(COMMANDS)[path]
    assert any("--json" in getattr(param, "opts", []) for param in command.params)


def test_listings_exist() -> None:
    """Given the tree, when listings are collected, then tenants, keys, jobs, dlq and workers are among them."""
    assert {path[0] for path in LISTINGS} >= {"tenants", "keys", "jobs", "dlq", "workers"}


@pytest.mark.parametrize("name", sorted(LAZY_SUBCOMMANDS))
def test_each_lazy_summary_says_what_its_command_holds(name: str) -> None:
    """Given a lazy command, whose `catalogan --help` line is written in LAZY_HELP (importing it would import
    torch), when the line is compared with the command, then a group's line names every subcommand and a
    command's line is its own short help: hand-copied lines had drifted (`tenants` "Create and list tenants."
    without set and rotate-webhook-secret, `beat` "the reaper loop" without webhooks and retention)."""
    command = dict(COMMANDS)[(name,)]
    summary = LAZY_HELP[name]
    if isinstance(command, click.Group):
        subcommands = command.list_commands(click.Context(command, info_name=name))
        missing = [
            sub for sub in subcommands if not re.search(rf"(?<![\w-]){re.escape(sub)}(?![\w-])", summary)
        ]
        assert missing == [], f"`catalogan --help` says {summary!r} for {name}, not naming {missing}"
    else:
        assert summary == command.get_short_help_str(limit=10_000)

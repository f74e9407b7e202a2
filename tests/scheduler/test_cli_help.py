"""Every `catalogan` command, lazy ones included, documents itself with an `Example:` in its help."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from scheduler.cli.root import LAZY_SUBCOMMANDS, cli


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

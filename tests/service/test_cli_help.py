"""Every ``faceserve`` sub-command explains itself: a one-line help in the command list, a
description on its own page, help text on every option, and no defaults that are not the
effective ones (argparse's ``(default: None)`` beside options whose value comes from a setting)."""

from __future__ import annotations

import argparse

import pytest

from service.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """(path, parser, one-line help) of every sub-command, at every depth."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(((*path, name), sub, helps.get(name)))
                found.extend(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(build_parser())
IDS = [" ".join(path) for path, _, _ in COMMANDS]


def test_the_walk_finds_the_commands() -> None:
    names = set(IDS)
    assert {"serve", "keys create", "heldout-pairs", "eval lfw", "reembed"} <= names


@pytest.mark.parametrize(("path", "parser", "line"), COMMANDS, ids=IDS)
def test_every_command_and_option_has_help(
    path: tuple[str, ...], parser: argparse.ArgumentParser, line: str | None
) -> None:
    assert line, f"`faceserve {' '.join(path)}` has no one-line help in its parent's list"
    assert parser.description, f"`faceserve {' '.join(path)} --help` has no description"
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and not (a.help or "").strip()
    ]
    assert not missing, f"`faceserve {' '.join(path)}`: options without help: {missing}"


@pytest.mark.parametrize(("path", "parser", "line"), COMMANDS, ids=IDS)
def test_no_command_shows_none_as_a_default(
    path: tuple[str, ...], parser: argparse.ArgumentParser, line: str | None
) -> None:
    text = parser.format_help()
    assert "(default: None)" not in text
    assert "default: None" not in text


def test_serve_help_shows_the_settings_defaults() -> None:
    from service.config import Settings, setting_default

    serve = dict((p, s) for p, s, _ in COMMANDS)[("serve",)]
    text = " ".join(serve.format_help().split())
    assert f"FACESERVE_HOST; default {Settings.model_fields['host'].default}" in text
    assert f"FACESERVE_PORT; default {Settings.model_fields['port'].default}" in text
    assert f"FACESERVE_DATA_DIR; default {setting_default('data_dir')}" in text

"""``lpa-domainbed --help``: every subcommand and option says what it is, the launcher lists
its choices and default, and no reST markup leaks into the text. No torch needed."""

from __future__ import annotations

import argparse
import re

import pytest

from lpa_domainbed.tools import cli, sweeps

MARKUP = re.compile(r"``|:(func|mod|class|data|attr|meth):`")


def _subcommands():
    action = next(a for a in build()._actions if isinstance(a, argparse._SubParsersAction))
    return action


def build():
    return cli.build_parser()


def test_every_subcommand_has_help_in_the_list():
    listed = {a.dest: a.help for a in _subcommands()._choices_actions}
    assert set(listed) == {"demo", "sweep", "weights", "evaluate", "tables"}
    assert all(text and text.strip() for text in listed.values()), listed


@pytest.mark.parametrize("name", ["demo", "sweep", "weights", "evaluate"])
def test_every_option_and_positional_has_help(name):
    parser = _subcommands().choices[name]
    undocumented = [a.dest for a in parser._actions
                    if not isinstance(a, argparse._HelpAction)
                    and (not a.help or a.help == argparse.SUPPRESS)]
    assert undocumented == []
    assert parser.description  # the subcommand's own --help says what it does


@pytest.mark.parametrize("argv", [[], ["demo"], ["sweep"], ["weights"], ["evaluate"]],
                         ids=lambda argv: " ".join(argv) or "top")
def test_no_rest_markup_in_help(argv, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and text.startswith("usage: lpa-domainbed")
    assert not MARKUP.search(text), MARKUP.search(text).group(0)


def test_the_launcher_lists_its_choices_and_default():
    from lpa_domainbed.tools.launchers import LAUNCHERS

    sweep = _subcommands().choices["sweep"]
    text = next(a.help for a in sweep._actions if a.dest == "launcher")
    for launcher in ("local", "dummy", "multi_gpu", *LAUNCHERS):
        assert re.search(rf"\b{launcher}\b", text), launcher
    for name in sweeps.known_sweeps():
        default = sweeps.load_sweep(name, check_registry=False).command_launcher
        assert f"{name}: {default}" in text
    assert "default: the sweep file's command_launcher" in text


def test_the_sweep_name_lists_the_sweep_files():
    sweep = _subcommands().choices["sweep"]
    text = next(a.help for a in sweep._actions if a.dest == "name")
    assert all(name in text for name in sweeps.known_sweeps()) and ".toml" in text

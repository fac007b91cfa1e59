"""What `tuner --help` shows beside each option: the kind of value it takes, and nothing beside a flag."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuner.cli import app


@pytest.mark.parametrize(("args", "flags"), [([], ["--version", "--help"]),
                                              (["dashboard"], ["--read-only", "--help"]),
                                              (["study"], ["--help"])])
def test_help_shows_no_value_type_beside_a_flag(args: list[str], flags: list[str]) -> None:
    shown = CliRunner().invoke(app, [*args, "--help"], terminal_width=120)
    assert shown.exit_code == 0, shown.output
    assert "<bool>" not in shown.output and "BOOLEAN" not in shown.output
    for flag in flags:
        assert any(flag in line for line in shown.output.splitlines())


def test_help_still_shows_the_type_of_an_option_that_takes_a_value() -> None:
    shown = CliRunner().invoke(app, ["study", "--help"], terminal_width=120)
    assert "<int>" in shown.output and "<path>" in shown.output  # --threads, --storage-password-file
    refused = CliRunner().invoke(app, ["dashboard", "--read-only", "--port", "0"])
    assert refused.exit_code == 2 and "'--port'" in refused.output  # --read-only is still a flag: it took no value


def test_help_keeps_words_in_square_brackets() -> None:
    # A new user's `tuner best --help` read "name one: 'lr')": the brackets were taken for rich markup and dropped.
    output = CliRunner().invoke(app, ["best", "--help"]).output
    shown = " ".join(output.replace("│", " ").split())  # the help's lines, joined across the panel's borders
    assert "'lr[optimizer=adam]'" in shown
    assert "[default: NAME-best]" in shown and "[default: the best of stages lr and shape" in shown
    assert "[default: sqlite:///tuner.db]" in shown  # a study named, no spec: not "the spec's storage"
    assert "the spec's storage" not in shown
    study = " ".join(CliRunner().invoke(app, ["study", "--help"]).output.replace("│", " ").split())
    assert "[default: the spec's storage, else sqlite:///tuner.db]" in study

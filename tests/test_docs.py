"""What the README and the ready studies promise, checked against each other and against the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tuner

ROOT = Path(__file__).resolve().parent.parent


def test_readme_and_the_quickstart_spec_state_the_same_measured_time() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    spec = (ROOT / "studies" / "quickstart.toml").read_text(encoding="utf-8")
    claim = re.compile(r"about (\d+ s) on 2 quiet CPU cores")
    in_readme = set(claim.findall(readme))
    assert in_readme and in_readme == set(claim.findall(spec))
    assert "12 s at load average 0.5" in readme  # the measurement behind the claim, and its machine


def test_every_key_is_optional_and_the_name_is_the_files_stem(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "Every key is optional, `name` included: without it the study is named after the file" in readme
    unnamed = tmp_path / "my-study.toml"
    unnamed.write_text('[data]\nname = "digits"\n', encoding="utf-8")
    assert tuner.load_spec(unnamed).name == "my-study"
    assert "A file with no key at all is refused" in readme
    unnamed.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(tuner.SpecError, match="the spec is empty"):
        tuner.load_spec(unnamed)

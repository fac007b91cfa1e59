"""What the README and the ready studies promise, checked against each other and against the code."""

from __future__ import annotations

import re
from pathlib import Path

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
    empty = tmp_path / "my-study.toml"
    empty.write_text("", encoding="utf-8")
    assert tuner.load_spec(empty).name == "my-study"

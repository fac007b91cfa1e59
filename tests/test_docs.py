"""What the README and the ready studies promise, checked against each other and against the code."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def test_the_quickstart_spec_lists_every_data_set_and_built_in_family() -> None:
    from tuner.inputs.families import BUILT_IN_FAMILIES
    from tuner.inputs.names import DATASETS

    spec = (ROOT / "studies" / "quickstart.toml").read_text(encoding="utf-8")
    listed = {key: line.split("#", 1)[1] for line in spec.splitlines()
              for key in ("name = \"digits\"", "family = ") if line.startswith(key)}
    assert set(re.findall(r"\w+", listed["name = \"digits\""])) >= set(DATASETS)
    assert set(re.findall(r"\w+", listed["family = "])) >= set(BUILT_IN_FAMILIES)


def test_the_prepared_gpu_check_parses_and_refuses_an_unknown_verb() -> None:
    # scripts/gpu_check.sh runs on a lent GPU machine, where a mistake costs device time: parse it here.
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    refused = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True)
    assert refused.returncode == 2 and "usage: bash scripts/gpu_check.sh fetch|run" in refused.stderr


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


def test_the_folders_the_readme_commands_write_are_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to ignore")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("tuner ")]
    folders = {match.rstrip("/") for line in commands for match in re.findall(r"--out ([\w./-]+)", line) if match != "DIR"}
    # Without --out, `tuner report` and `tuner best` write NAME-report and NAME-best.
    folders |= {"quickstart-report", "digits_cnn-best"}
    assert {"quickstart-report", "lr_find", "my-analysis", "best"} <= folders
    for folder in sorted(folders):
        checked = subprocess.run(["git", "check-ignore", "-q", f"{folder}/index.html"], cwd=ROOT)
        assert checked.returncode == 0, f"{folder}/ is not git-ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "tuner/best/refit.py"], cwd=ROOT).returncode == 1  # sources are not


def test_the_readme_set_up_matches_ci_and_says_what_it_assumes() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    set_up = re.search(r"```bash\n(pip install torch==(\S+) && pip install -e \"(\.\[[\w,]+\])\") && tuner study", readme)
    assert set_up is not None
    assert f"pip install --quiet --disable-pip-version-check torch=={set_up.group(2)}" in ci
    assert f'pip install --quiet --disable-pip-version-check -e "{set_up.group(3)}"' in ci  # the same extras
    assert "```bash\npython -m pytest\n```" in readme and ci.rstrip().endswith("python -m pytest")
    assert "a clone of this repository, a shell in its folder, and a virtual environment" in readme
    assert "whose name is not `tuner`" in readme
    assert f"pip install torch=={set_up.group(2)} --index-url https://download.pytorch.org/whl/cpu" in readme


def test_every_python_call_of_tuner_the_readme_names_is_there_after_import_tuner() -> None:
    # A new user's `tuner.importance.importance_table(...)`, as the README had it, failed after a plain `import tuner`.
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\btuner((?:\.[A-Za-z_]\w*)+)\(", readme))
    assert named, "the README names no call of tuner's Python API"
    for path in sorted(named):
        value = tuner
        for part in path.strip(".").split("."):
            value = getattr(value, part, None)
            assert value is not None, f"README: tuner{path}(...) is not there after `import tuner`"


def test_the_readme_states_the_auto_lr_scale_range_and_its_bounds_as_the_code_has_them() -> None:
    from tuner.study import lr_scale

    text = (ROOT / "README.md").read_text()
    spread = lr_scale.SPREAD  # lr_transfer = "rule": each shape's start, SPREAD either side
    assert f"`lr_scale = \"auto\"` searches [{1 / spread:.2g}, {spread:.2g}] around that start" in text
    assert f"never past [1/{round(1 / lr_scale.LOWEST)}, {lr_scale.HIGHEST:g}]" in text


def test_every_model_factory_the_readme_shows_takes_the_arguments_tuner_gives() -> None:
    text = (ROOT / "README.md").read_text()
    factories = re.findall(r"def (\w+)\(([^)]*\bn_outputs\b[^)]*)\)", text)  # a factory: it takes n_outputs
    assert factories, "the README shows no model factory any more: drop this test or point it at one"
    for name, arguments in factories:
        names = [a.split("=")[0].split(":")[0].strip() for a in arguments.split(",")]
        assert names[:4] == ["input_shape", "n_outputs", "width", "depth"], f"{name}({arguments})"

"""The README's plugin snippets and commands run as they stand in README.md."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from fedsim.logs import load

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Fast settings appended to the README's commands (the README runs the default experiment).
FAST = ["backend=inline", "model=mlp", "task.eval_samples=200", "fl.clients=2", "fl.rounds=1",
        "fl.batch_size=3", "device=cpu"]  # fmt: skip


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _write_snippets(folder: Path) -> list[str]:
    """Write every python block that starts with `# <file>.py` into `folder`; return the names."""
    names = []
    for block in _blocks(_section("Writing a plugin"), "python"):
        first = block.splitlines()[0]
        if re.fullmatch(r"# \w+\.py", first):
            (folder / first[2:]).write_text(block)
            names.append(first[2:])
    return names


def _commands() -> list[list[str]]:
    """The `.venv/bin/fedsim ...` commands of the plugin section, as argument lists."""
    lines = [ln for b in _blocks(_section("Writing a plugin"), "bash") for ln in b.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith(".venv/bin/fedsim ")]


def _fedsim(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}", "HYDRA_FULL_ERROR": "0"}
    cmd = [sys.executable, "-m", "fedsim.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_readme_plugins_run_as_written(tmp_path):
    assert _write_snippets(tmp_path) == ["myattacks.py", "mydefenses.py"]
    attack_cmd, defense_cmd = _commands()
    out = tmp_path / "attack"
    result = _fedsim([*FAST, *attack_cmd, f"output={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = load(out)
    mine = logs.attacks[logs.attacks["attack"] == "bias_sign"]
    assert len(mine) == 2 and (mine["status"] == "ok").all()
    assert (mine["recall"] == 1.0).all()  # the bias gradient reveals every label
    # The declared headline score reaches the round line and the end-of-run table.
    assert "bias_sign f1" in result.stderr + result.stdout
    assert logs.scores["bias_sign"][1] == {
        "name": "f1", "label": "f1", "headline": True, "higher_is_better": True
    }  # fmt: skip

    out = tmp_path / "defense"
    result = _fedsim([*FAST, *defense_cmd, f"output={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    clients = load(out).clients
    assert (clients["status"] == "ok").all(), clients["message"].tolist()
    assert (clients["defense"] == "noise").all()

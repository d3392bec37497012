"""The config: schemas, `compose_config`'s one-line errors, task/model pairing, user search paths.

Every error case runs in this process through `compose_config` (what the `fedsim` command's
pre-flight runs); one subprocess test checks the command's exit code and message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from fedsim.config import CONF_DIR, ConfigError, compose_config, preflight_overrides
from fedsim.schema import FLConfig, InlineBackend, RayBackend

ROOT = Path(__file__).resolve().parents[1]


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        compose_config(list(overrides))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fl.roundz=3"], ["unknown config key 'fl.roundz'", "Did you mean 'fl.rounds'",
                           "Valid keys in fl: batch_size, clients, fraction"]),
        (["defence=signsgd"], ["unknown config key 'defence'", "Did you mean 'defense'"]),
        (["backend=inline", "backend.num_cpus=2"], ["backend has no 'num_cpus'",
                                                    "Valid keys in backend: client_threads, name"]),
        (["attack.rlg.bogus=1"], ["attack.rlg has no 'bogus'", "+attack.rlg.bogus="]),
        (["defense=sgnsgd"], ["unknown defense 'sgnsgd'", "Did you mean 'signsgd'",
                              "Available defense options:", "graddrop", "none"]),
        (["model=resnet19"], ["unknown model 'resnet19'", "Did you mean 'resnet18'"]),
        (["attack=[rlg,nope]"], ["unknown attack 'nope'", "Available attack options", "yin"]),
        (["fl.lr=-1"], ["fl.lr must be > 0, got -1"]),
        (["fl.fraction=0"], ["fl.fraction must be in (0, 1]"]),
        (["fl.batch_size=0"], ["fl.batch_size (N) must be >= 1"]),
        (["fl.label_smoothing=1"], ["fl.label_smoothing must be in [0, 1)"]),
        (["device=gpu"], ["device must be auto, cpu, cuda or cuda:<i>, got 'gpu'"]),
        (["fl.lr=abc"], ["fl.lr must be a number, got 'abc'"]),
        (["fl.rounds=2.5"], ["fl.rounds must be an integer, got '2.5'"]),
        (["fl.keep_inputs=maybe"], ["fl.keep_inputs must be true or false"]),
        (["backend.num_cpus=x"], ["backend.num_cpus must be an integer or null, got 'x'"]),
        (["task=asr", "model=resnet18"],
         ["model resnet18 is an image model; task=asr takes model=las_whisper"]),
        (["model=las"], ["model las is an asr model; task=image takes model=small_cnn"]),
    ],
)  # fmt: skip
def test_bad_config_gives_one_clear_line(args, expected):
    message = _error(*args)
    for piece in expected:
        assert piece in message, message


def test_graddrop_rate_is_checked_by_its_constructor():
    from fedsim.factory import build_defense

    cfg = compose_config(["defense=graddrop", "defense.rate=1.5"])
    with pytest.raises(ConfigError, match=r"GradDrop rate must be in \[0, 1\)"):
        build_defense(cfg)


def test_the_task_picks_its_model_and_the_command_line_overrides_it():
    cfg = compose_config([])
    assert cfg["model"]["_target_"] == "fedsim.models.image.SmallCNN"
    assert cfg["task"]["model"] == cfg["model"]  # the task builds the model of the `model` node
    cfg = compose_config(["model=resnet18"])
    assert cfg["task"]["model"]["_target_"] == "fedsim.models.image.resnet18"
    cfg = compose_config(["task=asr", "model.dec_hidden=64"])
    assert cfg["model"]["_target_"] == "fedsim.asr.model.LAS" and cfg["model"]["task"] == "asr"
    assert cfg["task"]["model"]["dec_hidden"] == 64 and cfg["task"]["model"]["enc_hidden"] == 128


def test_schema_defaults_match_the_yaml():
    for schema, path in [(FLConfig, "fl/default.yaml"), (RayBackend, "backend/ray.yaml"),
                         (InlineBackend, "backend/inline.yaml")]:  # fmt: skip
        values = yaml.safe_load((CONF_DIR / path).read_text())
        values.pop("defaults", None)
        assert values == OmegaConf.to_container(OmegaConf.structured(schema)), path
    cfg = compose_config(["backend=inline"])
    assert cfg["backend"] == {"name": "inline", "client_threads": None}


def test_a_sweep_is_checked_value_by_value():
    sets = preflight_overrides(["defense=none,sgnsgd", "fl.rounds=2"])
    assert sets == [["defense=none", "fl.rounds=2"], ["defense=sgnsgd", "fl.rounds=2"]]
    compose_config(sets[0])
    with pytest.raises(ConfigError, match="unknown defense 'sgnsgd'"):
        compose_config(sets[1])


def test_a_users_config_folder_adds_choices(tmp_path, monkeypatch):
    """`hydra.searchpath=[file://./myconf] attack=[bias_sign]` finds the user's YAML."""
    folder = tmp_path / "myconf" / "attack"
    folder.mkdir(parents=True)
    (folder / "bias_sign.yaml").write_text(
        "# @package attack.bias_sign\n_target_: mypkg.BiasSign\nthreshold: 0\n"
    )
    models = tmp_path / "myconf" / "model"
    models.mkdir()
    (models / "tiny_las.yaml").write_text("_target_: fedsim.asr.model.LAS\ntask: asr\n")
    monkeypatch.chdir(tmp_path)
    search = "hydra.searchpath=[file://./myconf]"
    cfg = compose_config([search, "attack=[rlg,bias_sign]"])
    assert list(cfg["attack"]) == ["rlg", "bias_sign"]
    assert cfg["attack"]["bias_sign"] == {"_target_": "mypkg.BiasSign", "threshold": 0}
    assert "bias_sign, idlg" in _error(search, "attack=[bias_sgn]")
    assert "unknown attack 'bias_sign'" in _error("attack=[bias_sign]")  # not without the path
    assert "tiny_las is an asr model; task=image takes model=small_cnn" in _error(
        search, "model=tiny_las"
    )


def test_cli_exits_2_with_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "backend=inline", "fl.roundz=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedsim: config error: unknown config key 'fl.roundz': fl has no 'roundz'. Did you mean "
        "'fl.rounds'? Valid keys in fl: batch_size, clients, fraction, keep_inputs, "
        "label_smoothing, local_steps, lr, lr_schedule, mixup_alpha, rounds."
    ]
    assert "Traceback" not in result.stdout + result.stderr

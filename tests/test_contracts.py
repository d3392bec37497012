"""The shape of the house: one-way imports, the Flower-free attack runner, plugin dependencies."""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attacks.label_attacks import RLGAttack
from attacks.transcript_attack import TranscriptAttack
from fedcore import AttackRunner, Finding, ModelSpec, Score, ServerView, Truth, check_dependencies

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(package: str) -> dict[str, set[str]]:
    """file -> every module it imports, anywhere in the file (TYPE_CHECKING blocks included)."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(ROOT))] = names
    return out


def _offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{file} imports {name}"
        for file, names in _imported_modules(package).items()
        for name in sorted(names)
        if name.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize("package", ["attacks", "defenses"])
def test_plugins_import_nothing_from_the_simulation(package):
    assert _offending(package, ("fedsim", "flwr", "hydra", "omegaconf", "ray")) == []


def test_the_contracts_need_neither_flower_nor_hydra():
    forbidden = ("fedsim", "attacks", "defenses", "flwr", "hydra", "omegaconf", "ray")
    assert _offending("fedcore", forbidden) == []


def test_the_import_test_sees_type_checking_imports(tmp_path, monkeypatch):
    """The check would catch an import hidden under TYPE_CHECKING."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fedsim.logs import load\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert _offending("pkg", ("fedsim",)) == ["pkg/m.py imports fedsim.logs"]


# ------------------------------------------------------------------------------ the runner
def _view() -> tuple[ServerView, Truth]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.SiLU(), nn.Linear(16, 10))
    spec = ModelSpec(task="image", name="toy", num_classes=10, last_weight="2.weight",
                     last_bias="2.bias", build=lambda: model)  # fmt: skip
    x, y = torch.randn(3, 8), torch.tensor([1, 4, 7])
    loss = lambda m: nn.functional.cross_entropy(m(x), y)  # noqa: E731
    view = ServerView.from_local_steps(model, [loss], spec, lr=0.1, batch_size=3)
    return view, Truth(labels=y.numpy()[None])


@dataclass(frozen=True, kw_only=True)
class _Count(Finding):
    SCORES = (Score("count_seen", headline=True),)
    seen: int = 0

    def score(self, truth):
        return {"count_seen": float(self.seen)}


class _ReadsRlg:
    name = "reads_rlg"
    requires = ("rlg",)

    def __call__(self, view, findings):
        return _Count(seen=len(findings["rlg"].labels))


class _Raises:
    name = "raises"

    def __call__(self, view, findings):
        raise RuntimeError("boom")


class _Sleeps:
    name = "sleeps"

    def __call__(self, view, findings):
        time.sleep(3)
        return Finding()


def test_runner_runs_in_order_isolates_failures_and_scores():
    view, truth = _view()
    runner = AttackRunner([RLGAttack(), _Raises(), _Sleeps(), _ReadsRlg()], view.model, 0.5)
    rows = {r["attack"]: r for r in runner.run(view, truth)}
    assert rows["rlg"]["status"] == "ok" and rows["rlg"]["exact"] == 1.0
    assert rows["raises"]["status"] == "error" and "RuntimeError: boom" in rows["raises"]["message"]
    assert rows["sleeps"]["status"] == "error" and "timed out" in rows["sleeps"]["message"]
    assert rows["reads_rlg"]["count_seen"] == 3.0  # it saw RLG's finding of the same view
    assert [s.name for s in runner.scores["reads_rlg"]] == ["count_seen"]
    assert "f1" in [s.name for s in runner.scores["rlg"]]
    # No truth (deployment): findings are kept, nothing is scored.
    rows = {r["attack"]: r for r in runner.run(view, None)}
    assert rows["rlg"]["status"] == "ok" and "exact" not in rows["rlg"]


def test_runner_reports_attacks_that_do_not_apply_without_calling_them():
    view, truth = _view()
    runner = AttackRunner([RLGAttack(), TranscriptAttack()], view.model)
    reasons = runner.check(view.train_config)
    assert "speech" in reasons["transcript"]
    row = runner.run(view, truth)[1]
    assert row["status"] == "not_applicable" and row["message"] == reasons["transcript"]


def test_dependencies_must_be_listed_before():
    rlg, reads = RLGAttack(), _ReadsRlg()
    check_dependencies([rlg, reads])
    with pytest.raises(ValueError, match=r"needs attack 'rlg': list it before"):
        check_dependencies([reads])
    with pytest.raises(ValueError, match=r"needs 'rlg' to run first: attack=\[rlg,reads_rlg\]"):
        check_dependencies([reads, rlg])
    with pytest.raises(ValueError, match="unique"):
        check_dependencies([rlg, RLGAttack()])
    assert TranscriptAttack.requires == ("rlg",)


def test_truth_counts_tokens_and_labels_alike():
    images = Truth(labels=np.array([[3, 1], [3, 3]]))
    speech = Truth(labels=np.zeros((0,)), tokens=(((5, 3), (5, 5, 3)),))
    assert images.label_set == (1, 3) and images.label_counts == {1: 1, 3: 3}
    assert speech.label_set == (3, 5) and speech.label_counts == {3: 2, 5: 3}


def test_to_numpy_widens_half_precision_and_checks_finiteness():
    from fedcore.tensors import to_numpy

    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy(torch.ones(2), np.float64).dtype == np.float64
    for given, wanted in [(np.ones(2, np.float16), np.float32), (np.ones(2, int), np.float64),
                          (np.ones(2, np.float32), np.float32), ([True], np.float64)]:  # fmt: skip
        assert to_numpy(given, floating=True).dtype == wanted
    assert to_numpy([1.0, np.nan]).shape == (2,)
    with pytest.raises(ValueError, match="bias has non-finite entries"):
        to_numpy(torch.tensor([1.0, float("inf")]), finite=True, name="bias")

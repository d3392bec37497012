import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests draw the same examples on every run (CI must not depend on luck).
settings.register_profile("fedsim", derandomize=True, deadline=None)
settings.load_profile("fedsim")

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Small, fast defaults for in-process runs: tiny model, few test images, 2 clients, 1 round.
FAST = [
    "backend=inline",
    "model=mlp",
    "model.hidden=[32]",
    "task.eval_samples=200",
    "fl.clients=2",
    "fl.rounds=1",
    "attack=[]",
    "device=cpu",
]


@pytest.fixture
def run_fedsim(tmp_path):
    """Run an inline experiment with FAST defaults plus `overrides`; return its RunLogs."""
    from fedsim.config import compose_config
    from fedsim.logs import load
    from fedsim.simulation import run_experiment

    def run(*overrides: str, name: str = "run"):
        cfg = compose_config([*FAST, *overrides])
        return load(run_experiment(cfg, tmp_path / name))

    return run


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): its
    problems are tiny, or decoding is 6x slower on 2 threads of a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

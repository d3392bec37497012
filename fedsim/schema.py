"""The structured-config schemas of the Hydra tree, registered in Hydra's ConfigStore.

They give every fixed key its type and default, so OmegaConf rejects a value of the wrong type
(`fl.lr=abc`) and, the composed config being in struct mode, a key that does not exist
(`fl.roundz=3`). Ranges are checked in one place, `fedsim.config.validate`.

The plugin groups (`task`, `model`, `attack`, `defense`) stay free-form `_target_` nodes: their
keys are whatever the target's constructor takes.

`conf/config.yaml` starts its defaults list with `/schema/run@_here_` (this `RunConfig` at the
root); each `conf/backend/<name>.yaml` starts with `/schema/backend/<name>@_here_`.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

__all__ = ["FLConfig", "InlineBackend", "RayBackend", "RunConfig", "register"]


@dataclass
class FLConfig:
    """`fl.*`: the federated-learning schedule and the clients' local SGD."""

    rounds: int = 150
    clients: int = 16  # simulated clients (= partitions)
    fraction: float = 1.0  # fraction of clients sampled each round
    lr: float = 0.2  # client SGD learning rate (of the first round under a schedule)
    lr_schedule: str = "cosine"  # constant | cosine (lr in round 1 down to lr / 10 in the last)
    local_steps: int = 1  # K
    batch_size: int = 2  # N
    label_smoothing: float = 0.0  # epsilon
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixup weights; 0: off
    keep_inputs: bool = False  # clients attach inputs/features to the audit


@dataclass
class RayBackend:
    """`backend=ray`: Flower's simulation engine."""

    name: str = "ray"
    num_cpus: int | None = None  # CPUs given to Ray (null: all)
    client_cpus: int = 1  # CPUs per client actor
    client_gpus: float | None = None  # GPU fraction per client (null: 1/num_cpus of a GPU)
    client_threads: int | None = 1  # torch threads inside each client
    object_store_mb: int = 512


@dataclass
class InlineBackend:
    """`backend=inline`: the same apps in one process, clients one after another."""

    name: str = "inline"
    client_threads: int | None = None


@dataclass
class RunConfig:
    """The root of the config: the groups, then the run's own keys."""

    task: Any = None  # `_target_` node (conf/task/)
    model: Any = None  # `_target_` node (conf/model/), chosen by the task's defaults list
    attack: dict[str, Any] = field(default_factory=dict)  # name -> `_target_` node, in order
    defense: Any = None  # `_target_` node (conf/defense/)
    fl: FLConfig = field(default_factory=FLConfig)
    backend: Any = None  # RayBackend or InlineBackend (typed by conf/backend/<name>.yaml)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    output: str | None = None  # run directory (null: Hydra's outputs/DATE/TIME)
    attack_timeout: float | None = 120.0  # seconds per attack call (null: no limit)
    connect_timeout: float = 300.0  # seconds to wait for all clients to connect
    round_timeout: float | None = None  # seconds to wait for replies each round (null: no limit)
    keep_checkpoints: bool = False  # keep every round's global model
    resume: str | None = None  # a run directory to continue
    audit: bool | None = None  # clients attach ground truth (null: yes in simulation only)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; done when `fedsim.config` loads)."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=RunConfig)
    cs.store(group="schema/backend", name="ray", node=RayBackend)
    cs.store(group="schema/backend", name="inline", node=InlineBackend)

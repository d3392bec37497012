"""fedsim's core contracts: what the simulation, the attacks and the defenses agree on.

This package needs only torch and numpy (no Flower, no Hydra). The arrows of the house run
`fedsim` (simulation) -> `fedcore` <- `attacks`, `defenses`: plugins import from here, never from
`fedsim`, so the math and the plugins work outside Flower (a notebook, another FL framework).

- `ModelSpec`, `SpeechSpec`: what the server knows about the architecture it distributes.
- `ServerView`: what an honest-but-curious server has about one client's reply (no truth), or
  about a round's secure aggregate (`ServerView.of_aggregate`, `client_id = AGGREGATE`).
- `Truth`: a client's ground truth, seen only by the scorer.
- `Finding`, `Score`: what an attack returns, and the score columns it declares.
- `Attack`, `Defense`: the plugin protocols.
- `AttackRunner`: runs attacks on a view in order, isolated and timed, and scores them.
"""

from fedcore.devices import resolve_device
from fedcore.findings import ERROR, NOT_APPLICABLE, OK, Finding, Score, not_applicable
from fedcore.plugins import Attack, Defense, single_sample_reason
from fedcore.runner import AttackRunner, AttackTimeout, check_dependencies, run_with_timeout
from fedcore.spec import DecoderParams, ModelSpec, SpeechSpec
from fedcore.views import AGGREGATE, ServerView, Truth, frozen_tensors

__all__ = [
    "AGGREGATE",
    "ERROR",
    "NOT_APPLICABLE",
    "OK",
    "Attack",
    "AttackRunner",
    "AttackTimeout",
    "DecoderParams",
    "Defense",
    "Finding",
    "ModelSpec",
    "Score",
    "ServerView",
    "SpeechSpec",
    "Truth",
    "check_dependencies",
    "frozen_tensors",
    "not_applicable",
    "resolve_device",
    "run_with_timeout",
    "single_sample_reason",
]

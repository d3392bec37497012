"""What a run reports about itself: failed rounds, the one-line result, config labels, sweeps."""

from __future__ import annotations

import pandas as pd
import yaml

from fedcore import Score
from fedsim.analysis import config_labels, load_runs, sweep_table
from fedsim.logs import RoundLog
from fedsim.summary import failed_rounds, result_line, skipped_reasons


def _run(path, cfg, accuracy, f1, failed_round=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    log = RoundLog(path, context={"defense": cfg["defense"]["_target_"]})
    log.declare_scores({"rlg": [Score("f1", "F1", headline=True)]})
    for r in (0, 1, 2):
        ok = 0 if r == failed_round else 2
        log.add("rounds", round=r, accuracy=accuracy * r / 2, clients=2, ok=ok)
        if r == 0:
            continue
        for client in (0, 1):
            if r == failed_round:
                msg = "Traceback ...\nNameError: name 'torch' is not defined"
                log.add("clients", round=r, client=client, status="error", message=msg)
            else:
                log.add("clients", round=r, client=client, status="ok", message="")
                log.add("attacks", round=r, client=client, attack="rlg", status="ok", f1=f1)
    log.flush()
    return path


def _cfg(defense, lr=0.1, seed=0):
    return {"seed": seed, "output": "x", "fl": {"lr": lr}, "defense": {"_target_": defense}}


def test_failed_rounds_name_the_round_count_and_first_error():
    rounds = pd.DataFrame({"round": [0, 1, 2], "clients": [0, 4, 4], "ok": [0, 4, 0]})
    clients = pd.DataFrame(
        {
            "round": [2, 2, 2, 2],
            "status": ["error"] * 3 + ["timeout"],
            "message": ["Traceback\nNameError: name 'torch' is not defined"] * 3 + ["no reply"],
        }
    )
    assert failed_rounds(rounds, clients) == [
        "round 2: 0 of 4 updates aggregated "
        "(3 errors: NameError: name 'torch' is not defined; 1 timeouts: no reply)"
    ]
    assert failed_rounds(rounds.assign(ok=[0, 4, 1]), clients) == []


def test_result_line_names_final_metrics_and_mean_headline_scores():
    rounds = pd.DataFrame({"round": [0, 1, 2], "accuracy": [0.1, 0.5, 0.8]})
    attacks = pd.DataFrame(
        {"round": [1, 2], "attack": ["rlg"] * 2, "status": ["ok"] * 2, "f1": [1.0, 0.5]}
    )
    scores = {"rlg": [{"name": "f1", "label": "F1", "headline": True}]}
    assert result_line(rounds, attacks, scores) == "round 2: accuracy 0.800 | rlg F1 0.75"


def test_runs_are_labelled_and_grouped_by_every_key_they_differ_in(tmp_path):
    a = _run(tmp_path / "a", _cfg("none", lr=0.1), 0.8, 1.0)
    b = _run(tmp_path / "b", _cfg("none", lr=0.05), 0.6, 1.0)  # same defense, other lr
    c = _run(tmp_path / "c", _cfg("signsgd", lr=0.1), 0.7, 0.2, failed_round=2)
    labels = config_labels([a, b, c])
    assert labels[a] == "defense=none, fl.lr=0.1"
    assert labels[b] == "defense=none, fl.lr=0.05"  # never merged with a
    rounds, attacks = load_runs([a, b, c])
    assert rounds.groupby("config").ngroups == 3 and set(attacks["config"]) == set(labels.values())
    table = sweep_table([a, b, c]).set_index("config")
    assert table.loc[labels[a], "accuracy"] == 0.8 and table.loc[labels[b], "accuracy"] == 0.6
    assert table.loc[labels[a], "rlg F1"] == 1.0 and table.loc[labels[c], "rlg F1"] == 0.2
    assert table.loc[labels[c], "failed rounds"] == 1 and table.loc[labels[a], "failed rounds"] == 0


def test_skipped_attacks_are_listed_with_their_reason():
    attacks = pd.DataFrame(
        {
            "attack": ["idlg", "idlg", "rlg", "rlg"],
            "status": ["not_applicable", "not_applicable", "ok", "error"],
            "message": [
                "iDLG needs batch_size 1",
                "iDLG needs batch_size 1",
                "",
                "boom\nValueError: x",
            ],
            "round": [1, 2, 1, 2],
        }
    )
    assert skipped_reasons(attacks) == [
        "idlg not_applicable (2 rows): iDLG needs batch_size 1",
        "rlg error (1 rows): ValueError: x",
    ]


def test_client_errors_are_plain_text_with_the_exception_first():
    from fedsim.errors import plain_error

    ray = (
        "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=1)\nTraceback (most recent call last):\n"
        "  File \"x.py\", line 1\nNameError: name 'torch' is not defined\n"
        "The above exception was the direct cause of:\nflwr.ClientAppException: boom"
    )
    text = plain_error(ray)
    assert text.startswith("flwr.ClientAppException: boom\n\nray::ClientAppActor.run()")
    assert "\x1b" not in text
    assert plain_error("NameError: x") == "NameError: x"
    # An error reply's reason (`client_error_reply`) starts with its headline: not repeated.
    reason = (
        "RuntimeError: client 1 crashed\n\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in train\nRuntimeError: client 1 crashed'
    )
    assert plain_error(reason) == reason

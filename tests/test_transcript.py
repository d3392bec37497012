"""Transcript reconstruction (`attacks.transcript`, `attacks.transcript_attack`) on a tiny LAS."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.labelset import LabelSet
from attacks.rlg import reveal_labels
from attacks.transcript import (
    MATCHED,
    Transcript,
    TranscriptOptions,
    _lstm_cell,
    _Problem,
    decoder_gradients,
    parameter_names,
    reconstruct_transcript,
    span_decode,
)
from attacks.transcript_attack import TranscriptAttack
from fedcore import Finding, ModelSpec, ServerView, SpeechSpec, Truth, frozen_tensors
from fedsim.asr.model import LAS, LAS_DECODER, pad_batch, sequence_loss

V, EOS, LR = 40, 3, 0.1
SIZES = {"enc_hidden": 16, "dec_hidden": 32, "embed_dim": 16, "att_dim": 16, "channels": 4}


def tiny_las(seed: int = 0) -> LAS:
    torch.manual_seed(seed)
    return LAS(V, **SIZES)


MODEL = tiny_las()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def gradients(model: LAS, target: list[int], seed: int = 0, frames: int = 60) -> dict:
    """The loss gradient of one utterance (random features) with targets `target` (ends in eos)."""
    feats = [torch.randn(frames, 40, generator=torch.Generator().manual_seed(seed))]
    x, lengths, inp, y = pad_batch(feats, [target], model.pad_id, model.bos_id)
    model.zero_grad()
    sequence_loss(model(x, lengths, inp), y, model.pad_id).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    return grads


def test_simulated_decoder_gradient_is_exact_at_the_truth():
    """With the true contexts, soft labels, attention signals and the zero initial state, the
    simulated gradients of every matched parameter equal the real ones."""
    target = [28, 30, 6, 30, 36, EOS]
    model = tiny_las(1)
    signals, contexts = [], []

    def keep_signal(module, inputs, out):
        out.retain_grad()
        signals.append(out)

    def keep_context(module, inputs, out):
        contexts.append(inputs[0][:, 32:].detach())

    hooks = [
        model.att_s.register_forward_hook(keep_signal),
        model.output.register_forward_hook(keep_context),
    ]
    grads = gradients(model, target)  # runs the hooked forward/backward
    for h in hooks:
        h.remove()
    prob = _Problem(model, grads, LAS_DECODER, sorted(set(target)), 6, match=MATCHED,
                    device=torch.device("cpu"), dtype=torch.float64)  # fmt: skip
    ctx = torch.stack(contexts, 1).double().requires_grad_(True)
    delta = torch.stack([o.grad for o in signals], 1).double()
    hot = torch.searchsorted(prob.bow, torch.tensor(target))
    probs = torch.nn.functional.one_hot(hot, len(prob.bow)).double()[None]
    s0, c0 = (v[None] for v in prob.init_state)
    assert float(prob.distance(ctx, probs, delta, s0, c0).detach()) < 1e-8
    # without the attention path the LSTM cell's gradient does not match
    assert float(prob.distance(ctx, probs, 0 * delta, s0, c0).detach()) > 1.0


def test_lstm_cell_step_is_torchs():
    torch.manual_seed(0)
    cell, x, h, c = torch.nn.LSTMCell(5, 7), torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 7)
    gates = x @ cell.weight_ih.T + h @ cell.weight_hh.T + cell.bias_ih + cell.bias_hh
    for ours, torchs in zip(_lstm_cell(gates, c), cell(x, (h, c)), strict=True):
        torch.testing.assert_close(ours, torchs)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    pieces=st.lists(st.integers(4, V - 1), min_size=0, max_size=9),
    seed=st.integers(0, 100),
    use_bow=st.booleans(),
)
def test_span_decode_is_exact(pieces, seed, use_bow):
    target = [*pieces, EOS]
    grads = gradients(MODEL, target, seed)
    bow = sorted(set(target)) if use_bow else None
    tokens, ctx, resid = span_decode(MODEL, grads, bow, len(target), LAS_DECODER, device="cpu")
    assert tokens == target
    assert ctx.shape == (len(target), 32) and max(resid) < 1e-4


def test_span_init_converges_at_once():
    target = [7, 7, 19, 25, 11, 30, 7, EOS]
    res = reconstruct_transcript(MODEL, gradients(MODEL, target), sorted(set(target)),
                                 len(target), LAS_DECODER,
                                 TranscriptOptions(init="span", device="cpu"))  # fmt: skip
    assert list(res.tokens) == target and res.distance < 1e-6
    assert res.steps == 0 and res.diagnostics["stop"] == "converged"
    assert res.diagnostics["init"] == "span" and res.diagnostics["init_state"] == "zero"


def test_paper_method_random_restarts_exact_on_a_short_transcript():
    target = [12, 33, 5, EOS]
    options = TranscriptOptions(restarts=5, steps=1000, patience=300, init="random",
                                device="cpu")  # fmt: skip
    res = reconstruct_transcript(MODEL, gradients(MODEL, target, 3), sorted(set(target)),
                                 len(target), LAS_DECODER, options)  # fmt: skip
    assert list(res.tokens) == target, res.diagnostics
    assert res.distance < 1e-3 and res.restarts == 5
    # contexts (S x C) + labels over the BoW (S - 1 rows: eos is fixed last)
    assert res.num_variables == 4 * 32 + 3 * 4


def test_no_bow_baseline_runs_with_the_same_budget():
    target = [12, 33, 5, EOS]
    grads = gradients(MODEL, target, 3)
    options = TranscriptOptions(restarts=2, steps=30, init="random", device="cpu")
    res = reconstruct_transcript(MODEL, grads, None, 4, LAS_DECODER, options)
    assert len(res.tokens) == 4 and all(0 <= t < V for t in res.tokens)
    assert res.num_variables == 4 * 32 + 3 * V and np.isfinite(res.distance)
    assert res.steps == 30


class _Chars:
    """A fake tokenizer: token t -> a word per token, eos ends the text."""

    def decode(self, ids):
        words = []
        for i in ids:
            if i == EOS:
                break
            words.append(f"w{i}")
        return " ".join(words)


def test_transcript_scores():
    truth = Truth(labels=np.zeros((1, 0), dtype=np.int64), tokens=(((5, 6, 7, EOS),),))
    exact = Transcript(tokens=(5, 6, 7, EOS), tokenizer=_Chars())
    assert exact.score(truth) == {"exact": 1.0, "token_wer": 0.0, "length_error": 0.0,
                                  "wer": 0.0, "text_exact": 1.0}  # fmt: skip
    wrong = Transcript(tokens=(5, 9, 7, 8, EOS))
    scores = wrong.score(truth)
    assert scores["exact"] == 0.0 and scores["token_wer"] == pytest.approx(2 / 3)
    assert scores["length_error"] == 1.0 and scores["wer"] == scores["token_wer"]
    assert Transcript(status="not_applicable").score(truth) == {}


def test_bad_input_is_rejected():
    grads, cpu = gradients(MODEL, [5, EOS]), TranscriptOptions(device="cpu")
    with pytest.raises(ValueError, match="length"):
        reconstruct_transcript(MODEL, grads, [5, EOS], 0, LAS_DECODER, cpu)
    with pytest.raises(ValueError, match="bow"):
        reconstruct_transcript(MODEL, grads, [5, V + 3], 2, LAS_DECODER, cpu)
    with pytest.raises(ValueError, match="lacks"):
        reconstruct_transcript(MODEL, {}, [5, EOS], 2, LAS_DECODER, cpu)
    with pytest.raises(ValueError, match="lr"):
        decoder_gradients({}, 0.0, LAS_DECODER)
    for bad, word in [({"labels": "hinge"}, "labels"), ({"init": "zero"}, "init"),
                      ({"init_state": "learnt"}, "init_state"), ({"restarts": 0}, "restarts"),
                      ({"match": ("decoder.weight_ih",)}, "match")]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            TranscriptOptions(**bad)


def test_parameter_names_come_from_the_decoder_spec():
    names = parameter_names(LAS_DECODER)
    assert set(names) == set(MATCHED)
    assert names["cell.weight_ih"] == "decoder.weight_ih" and names["embed"] == "embed.weight"
    assert names["attention_query.bias"] == "att_s.bias"
    assert set(names.values()) <= dict(MODEL.named_parameters()).keys()
    update = {n: torch.ones(1) for n in ("output.weight", "decoder.bias_hh", "conv.0.weight")}
    assert set(decoder_gradients(update, 0.5, LAS_DECODER)) == {"output.weight", "decoder.bias_hh"}


def test_penalty_labels_and_optimised_initial_state_run():
    """The paper's row-sum penalty and a free initial state (every gradient matched)."""
    target = [12, 33, 5, EOS]
    options = TranscriptOptions(labels="penalty", init_state="optimise", match=MATCHED,
                                restarts=2, steps=5, device="cpu", dtype=torch.float64)  # fmt: skip
    res = reconstruct_transcript(MODEL, gradients(MODEL, target), sorted(set(target)), 4,
                                 LAS_DECODER, options)  # fmt: skip
    assert len(res.tokens) == 4 and np.isfinite(res.distance) and res.steps == 5
    assert set(res.diagnostics["parts"]) == set(parameter_names(LAS_DECODER).values())
    # contexts, labels (eos fixed), attention signals, initial state and cell
    assert res.num_variables == 4 * 32 + 3 * 4 + 4 * 16 + 2 * 32


# ------------------------------------------------------------------------------------ plugin
def view_of(target: list[int], seed: int = 0, **config) -> ServerView:
    grads = gradients(MODEL, target, seed)
    spec = SpeechSpec(task="asr", name="las", num_classes=V, last_weight="output.weight",
                      last_bias="output.bias", build=lambda: LAS(V, **SIZES),
                      pad_id=0, bos_id=2, eos_id=EOS, decoder=LAS_DECODER)  # fmt: skip
    train = {"lr": LR, "local_steps": 1, "batch_size": 1, "label_smoothing": 0.0, **config}
    return ServerView(round=1, client_id=0, global_model=frozen_tensors(MODEL.state_dict()),
                      update=frozen_tensors({n: -LR * g for n, g in grads.items()}),
                      train_config=train, num_examples=1, model=spec)  # fmt: skip


def test_plugin_reads_bow_and_length_from_rlg():
    target = [8, 21, 8, 14, 35, EOS]
    view = view_of(target, seed=5)
    w, b = view.last_layer_update()
    rlg = reveal_labels(w, bias_update=b)  # S estimated from the spectrum
    assert rlg.ok and rlg.num_labels == len(target)
    found = TranscriptAttack()(view, {"rlg": rlg})
    assert found.ok and list(found.tokens) == target
    truth = Truth(labels=np.zeros((1, 0), dtype=np.int64), tokens=((tuple(target),),))
    assert found.score(truth)["exact"] == 1.0
    # a wrong length from RLG is used as is (never the truth): the transcript is not exact
    short = LabelSet(labels=rlg.labels, num_labels=len(target) - 1)
    guess = TranscriptAttack(restarts=1, steps=5)(view, {"rlg": short})
    assert len(guess.tokens) == len(target) - 1 and guess.score(truth)["exact"] == 0.0


def test_plugin_without_bow_uses_the_whole_vocabulary():
    target = [8, 21, EOS]
    view = view_of(target)
    rlg = LabelSet(labels=(8, 21, EOS), num_labels=3)
    found = TranscriptAttack(use_bow=False)(view, {"rlg": rlg})
    assert found.ok and list(found.tokens) == target  # the span init needs no BoW
    assert found.diagnostics["bow_size"] == V


def test_fallback_recovers_when_the_bow_misses_a_piece():
    """RLG's BoW can miss a piece (a trained model): the gradient is then not matched, and the
    fallback over the whole vocabulary finds the exact transcript."""
    target = [8, 21, 8, 14, 35, EOS]
    view = view_of(target, seed=5)
    rlg = LabelSet(labels=(8, 14, 35, EOS), num_labels=len(target))  # 21 missing
    strict = TranscriptAttack(fallback=False, restarts=1, steps=20)(view, {"rlg": rlg})
    assert list(strict.tokens) != target and strict.distance > 1e-3
    assert "fallback" not in strict.diagnostics
    found = TranscriptAttack(restarts=1, steps=20)(view, {"rlg": rlg})
    assert list(found.tokens) == target and found.distance < 1e-6
    assert found.diagnostics["fallback"]["kept"] == "vocab"
    assert found.diagnostics["fallback"]["bow_distance"] == strict.distance
    assert found.diagnostics["bow_size"] == V


def test_plugin_not_applicable():
    view = view_of([8, EOS])
    attack = TranscriptAttack()
    assert attack(view, {}).status == "not_applicable"
    failed = Finding(status="not_applicable", message="rank 0")
    assert "rank 0" in attack(view, {"rlg": failed}).message
    assert "batch_size" in attack.check(view.model, {"batch_size": 2, "local_steps": 1})
    assert "local_steps" in attack.check(view.model, {"batch_size": 1, "local_steps": 3})
    image = ModelSpec(task="image", name="lenet", num_classes=10, last_weight="fc.weight",
                      last_bias=None, build=lambda: None)  # fmt: skip
    assert "asr" in attack.check(image, {"batch_size": 1, "local_steps": 1})
    assert attack.check(view.model, view.train_config) is None
    no_decoder = replace(view.model, decoder=None)
    assert "decoder" in attack.check(no_decoder, view.train_config)
    batch2 = view_of([8, EOS], batch_size=2)
    assert attack(batch2, {"rlg": LabelSet(labels=(8, EOS), num_labels=2)}).status == (
        "not_applicable"
    )


def test_hydra_config_instantiates_the_plugin():
    from pathlib import Path

    import yaml

    from attacks import transcript_attack

    conf = Path(transcript_attack.__file__).parents[1] / "fedsim/conf/attack/transcript.yaml"
    text = conf.read_text()
    assert text.startswith("# @package attack.transcript")
    options = yaml.safe_load(text)
    assert options.pop("_target_") == "attacks.transcript_attack.TranscriptAttack"
    assert TranscriptAttack(**options).name == "transcript"


def test_inline_asr_run_logs_transcript_scores(tmp_path, tmp_path_factory):
    """`task=asr` end to end (inline backend, batch size 1): RLG then transcript rows, scored."""
    from fedsim.config import compose_config
    from fedsim.logs import load
    from fedsim.simulation import run_experiment

    cache = tmp_path_factory.getbasetemp() / "fedsim-asr"  # shared with tests/test_asr_task.py
    cfg = compose_config(
        ["backend=inline", "task=asr", "model=las", "task.corpus=tiny", f"task.cache_dir={cache}",
         "task.eval_utterances=2", "fl.clients=2", "fl.rounds=1", "fl.batch_size=1",
         "fl.lr=0.05", "attack=[rlg,transcript]", "device=cpu"]
    )  # fmt: skip
    rows = load(run_experiment(cfg, tmp_path / "run")).attacks
    rows = rows[rows["attack"] == "transcript"]
    assert list(rows["status"]) == ["ok", "ok"]
    assert rows["exact"].tolist() == [1.0, 1.0] and rows["wer"].tolist() == [0.0, 0.0]
    assert rows["text_exact"].tolist() == [1.0, 1.0]  # word-level: the task's tokenizer file

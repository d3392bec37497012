"""ASR model and task: overfitting, local SGD, token truth, evaluation, RLG bag of words."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from attacks.rlg import reveal_labels
from fedcore import SpeechSpec
from fedsim.tasks.asr import AsrTask
from fedsim.tasks.base import TrainConfig

EOS, PAD, BOS = 3, 0, 2


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    torch.set_num_threads(1)
    return AsrTask(corpus="tiny", vocab_size=1000, eval_utterances=2,
                   cache_dir=str(tmp_path_factory.getbasetemp() / "fedsim-asr"))  # fmt: skip


def test_model_spec_names_the_output_projection(task):
    spec = task.model_spec()
    model = spec.build()
    params = dict(model.named_parameters())
    assert spec.task == "asr" and spec.num_classes == 1000
    assert params[spec.last_weight].shape == (1000, 256 + 256)  # [decoder state; context]
    assert params[spec.last_bias].shape == (1000,)
    assert isinstance(spec, SpeechSpec) and (spec.pad_id, spec.eos_id) == (PAD, EOS)
    assert spec.protocol_labels == (EOS,) and spec.max_labels_per_sample == task.max_target_tokens


def test_model_overfits_a_handful_of_utterances(task):
    """Adam from scratch learns 4 utterances: loss falls below 0.05 and greedy decoding gives the
    transcripts. How long attention takes to lock on depends on the initialisation (30 to over
    100 steps for seeds 0-3 on this corpus); seed 3 gets there in about 45 steps."""
    torch.manual_seed(3)
    model = task.build_model()
    train = task.corpus.indices("train")
    idx = train[np.argsort([task.corpus.utterances[i].frames for i in train])][:4]  # shortest
    texts = [task.corpus.utterances[i].text for i in idx]
    assert len(set(texts)) == 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(120):
        loss = task.loss(model, idx)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if losses[-1] < 0.05:
            break
    assert losses[-1] < 0.05 < 5.0 < losses[0]
    assert task.transcribe(model, idx) == texts


def test_local_train_is_plain_sgd_with_token_truth(task):
    model = task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(round=3, lr=0.1, local_steps=2, batch_size=3, seed=7)
    result = task.local_train(model, 1, 2, config, torch.device("cpu"))
    truth = result.truth
    assert result.num_examples == 6 and np.isfinite(result.metrics["train_loss"])
    assert truth.labels.shape == (2, 0) and len(truth.tokens) == 2
    assert all(len(step) == 3 for step in truth.tokens)
    for step in truth.tokens:
        for utt in step:
            assert utt[-1] == EOS and EOS not in utt[:-1]
            assert PAD not in utt and BOS not in utt and 1 not in utt
    assert EOS in truth.label_set
    # Deterministic in (seed, round, partition), and drawn from the partition.
    again = task.local_train(task.build_model(), 1, 2, config, torch.device("cpu"))
    assert again.truth.tokens == truth.tokens
    other = task.local_train(task.build_model(), 0, 2, config, torch.device("cpu"))
    assert other.truth.tokens != truth.tokens
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def _with_partition(task: AsrTask, scheme: str) -> AsrTask:
    """A shallow copy of the shared task with another partition scheme (the module fixture stays
    untouched; `partitions` caches per object, so the copy computes its own)."""
    other = copy.copy(task)
    other.partition = scheme
    return other


def test_partitions_cover_the_train_split(task):
    for scheme in ("speaker", "iid"):
        parts = _with_partition(task, scheme).partitions(3)
        flat = np.concatenate(parts)
        assert len(flat) == len(set(flat)) == len(task.corpus.indices("train"))
        assert all(len(p) for p in parts)
    assert task.partition == "speaker"  # the shared fixture is not mutated
    speakers = [{task.corpus.utterances[i].speaker for i in p} for p in task.partitions(3)]
    voices = {u.speaker for u in task.corpus.utterances}
    assert sum(len(s) for s in speakers) <= len(voices) + 3 - 1  # contiguous cuts by speaker
    with pytest.raises(ValueError, match="num_partitions"):
        task.partitions(10_000)


def test_evaluate_reports_loss_and_wer(task):
    metrics = task.evaluate(task.build_model(), torch.device("cpu"))
    assert set(metrics) == {"loss", "wer"}
    assert metrics["loss"] == pytest.approx(np.log(1000), rel=0.1)  # untrained: about uniform
    assert metrics["wer"] >= 0.9


@pytest.mark.parametrize("which", [0, 5, 9])
def test_rlg_reveals_the_bag_of_words_of_one_utterance(task, which):
    """One utterance, one SGD step: RLG on the projection update gives exactly the BoW (the
    target pieces + eos) and, without knowing it, the number of target tokens. A repeated piece
    can hide below the float32 noise of `after - before` on an untrained model, so the length
    is exact when the pieces are distinct and otherwise between the distinct and total counts."""
    torch.manual_seed(which)
    model = task.build_model()
    spec = task.model_spec()
    before = model.state_dict()[spec.last_weight].clone()
    idx = task.corpus.indices("train")[which]
    _, tokens = task.sgd_steps(model, [[idx]], lr=0.05)
    update = model.state_dict()[spec.last_weight] - before
    found = reveal_labels(update)
    truth = tokens[0][0]
    assert found.labels == tuple(sorted(set(truth)))
    if len(set(truth)) == len(truth):
        assert found.num_labels == len(truth)
    else:
        assert len(set(truth)) <= found.num_labels <= len(truth)


def test_rlg_counts_tokens_of_eight_utterances_with_the_bias(task):
    """N = 8 utterances, one step, untrained LAS: the softmax barely depends on the input, so
    repeated pieces (eos appears 8 times) share one direction and the weight update's rank is
    the number of distinct pieces. The bias update gives the counts, hence S, exactly."""
    from collections import Counter

    torch.manual_seed(0)
    model = task.build_model()
    spec = task.model_spec()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    picks = task.corpus.indices("train")[:8].tolist()
    _, tokens = task.sgd_steps(model, [picks], lr=0.05)
    after = model.state_dict()
    found = reveal_labels(
        after[spec.last_weight] - before[spec.last_weight],
        bias_update=after[spec.last_bias] - before[spec.last_bias],
    )
    truth = Counter(t for utt in tokens[0] for t in utt)
    assert found.labels == tuple(sorted(truth))
    assert found.counts == dict(truth)
    assert found.num_labels == sum(truth.values())


def test_inline_run_logs_bag_of_words_scores(tmp_path, tmp_path_factory):
    """`task=asr` end to end (inline backend): RLG rows with BoW scores, WER per round."""
    from fedsim.config import compose_config
    from fedsim.logs import load
    from fedsim.simulation import run_experiment

    cache = tmp_path_factory.getbasetemp() / "fedsim-asr"
    cfg = compose_config(
        ["backend=inline", "task=asr", "model=las", "task.corpus=tiny", f"task.cache_dir={cache}",
         "task.eval_utterances=2", "fl.clients=2", "fl.rounds=1", "fl.batch_size=1",
         "fl.lr=0.05", "attack=[rlg]", "device=cpu"]
    )  # fmt: skip
    logs = load(run_experiment(cfg, tmp_path / "run"))
    rows = logs.attacks
    assert list(rows["status"]) == ["ok", "ok"] and set(rows["task"]) == {"asr"}
    assert rows["exact"].tolist() == [1.0, 1.0] and rows["length_error"].tolist() == [0.0, 0.0]
    assert logs.rounds["wer"].notna().all()

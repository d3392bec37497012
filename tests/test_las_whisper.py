"""model=las_whisper: the corpus's held-out voices, cached Whisper encoder states, the LAS over
them (overfitting, RLG's bag of words, checkpoints) and an inline federated run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from attacks.rlg import reveal_labels
from fedsim.asr.corpus import load_corpus
from fedsim.asr.pretrained import SHIPPED, save_checkpoint
from fedsim.asr.voices import HELDOUT_VOICES
from fedsim.tasks.asr import AsrTask

pytestmark = pytest.mark.usefixtures("one_thread")
NODE = OmegaConf.to_container(
    OmegaConf.load(Path(__file__).parents[1] / "fedsim" / "conf" / "model" / "las_whisper.yaml")
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "fedsim-asr")


@pytest.fixture(scope="module")
def task(cache) -> AsrTask:
    """`model=las_whisper` from scratch on the tiny corpus, with the shipped word pieces."""
    return AsrTask(corpus="tiny", model={**NODE, "init": "scratch"}, eval_utterances=2,
                   cache_dir=cache)  # fmt: skip


def test_heldout_voices_form_their_own_test_splits(tmp_path):
    """Each held-out voice reads its own unseen KJV clauses into `test-<voice>`; none of them
    is in the train split, and no clause is read twice across the corpus."""
    corpus = load_corpus("tiny", tmp_path, heldout_utterances=2, progress=False)
    assert corpus.splits == ("train", "test", *sorted(f"test-{v}" for v in HELDOUT_VOICES))
    for voice in HELDOUT_VOICES:
        idx = corpus.indices(f"test-{voice}")
        assert len(idx) == 2 and {corpus.utterances[i].speaker for i in idx} == {voice}
        assert all(0.5 < corpus.utterances[i].seconds < 16 for i in idx)
    kjv = [u.uid.split("/")[1] for u in corpus.utterances if "/kjv" in u.uid]
    assert len(kjv) == len(set(kjv))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.indices("dev")


def test_encoder_states_are_cached_pooled_and_match_one_by_one(task):
    """States `(ceil(T / 4), 384)` per utterance (T Whisper frames of 10 ms), the same as each
    utterance encoded alone (cosine > 0.999; batches group equal lengths only)."""
    from fedsim.asr.whisper.encoder_features import encode
    from fedsim.asr.whisper.features import whisper_mels
    from fedsim.asr.whisper.weights import load_tiny_en

    mels, states = whisper_mels(task.corpus), task.inputs
    assert len(states) == len(mels) == len(task.corpus) and states.dim == 384
    encoder = load_tiny_en().encoder
    for i in (0, len(mels) - 1):
        assert states.rows(i).shape == ((mels[i].shape[1] + 3) // 4, 384)
        alone = encode(encoder, [mels[i]])[0]
        cached = states.rows(i)
        cos = (
            (alone * cached).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(cached, axis=1)
        )
        assert cos.min() > 0.999


def test_las_whisper_overfits_a_few_utterances(task):
    """Adam on 3 short utterances: greedy decoding gives their transcripts."""
    torch.manual_seed(0)
    model = task.build_model()
    train = task.corpus.indices("train")
    idx = train[np.argsort([task.corpus.utterances[i].frames for i in train])][:3]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = task.loss(model, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.02:
            break
    assert task.transcribe(model, idx) == [task.corpus.utterances[i].text for i in idx]


def test_rlg_reads_the_bag_of_words_of_a_las_whisper_update(task):
    """One SGD step on two utterances at the untrained decoder: RLG on `output.weight`'s update
    gives exactly the pieces of both transcripts plus eos."""
    torch.manual_seed(1)
    model = task.build_model()
    spec = task.model_spec()
    assert spec.last_weight == "output.weight" and spec.num_classes == 1000
    before = model.state_dict()[spec.last_weight].clone()
    picks = task.corpus.indices("train")[:2].tolist()
    _, tokens = task.sgd_steps(model, [picks], lr=0.05)
    found = reveal_labels(model.state_dict()[spec.last_weight] - before)
    assert found.labels == tuple(sorted({t for utt in tokens[0] for t in utt}))


def test_init_pretrained_starts_from_the_checkpoint(task, tmp_path, cache):
    """`init: pretrained` loads the folder's weights (float16 -> float32) and word pieces; a
    missing checkpoint or a different vocabulary is one clear error."""
    torch.manual_seed(2)
    model = task.build_model()
    save_checkpoint(tmp_path / "ckpt", model, task.tokenizer.path, {"note": "test"})
    node = {**NODE, "init": "pretrained", "pretrained": str(tmp_path / "ckpt")}
    loaded = AsrTask(corpus="tiny", model=node, cache_dir=cache).build_model()
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value.half().float())
    with pytest.raises(ValueError, match=r"no trained checkpoint at .*model\.init=scratch"):
        AsrTask(
            corpus="tiny", model={**node, "pretrained": str(tmp_path / "none")}, cache_dir=cache
        )
    with pytest.raises(ValueError, match="has 1000 word pieces, not vocab_size=500"):
        AsrTask(corpus="tiny", model=node, vocab_size=500, cache_dir=cache)
    with pytest.raises(ValueError, match=r"unknown model\.features 'mfcc'"):
        AsrTask(corpus="tiny", model={**node, "features": "mfcc"}, cache_dir=cache)


def test_shipped_checkpoint_transcribes_unseen_sentences(cache):
    """The shipped `las_whisper` checkpoint (bench/asr_train.py) met its target on the large
    corpus, and transcribes the tiny corpus's flite sentences (seen voices) well."""
    info = json.loads((SHIPPED / "las_whisper" / "info.json").read_text())
    assert info["test_wer"]["test/flite"] <= 0.2
    task = AsrTask(corpus="tiny", model=NODE, cache_dir=cache)
    model = task.build_model()
    flite = [i for i, u in enumerate(task.corpus.utterances) if u.source == "flite"]
    from fedsim.asr.metrics import word_error_rate

    refs = [task.corpus.utterances[i].text for i in flite]
    assert word_error_rate(refs, task.transcribe(model, flite)) < 0.35


def test_inline_las_whisper_run_fine_tunes_and_leaks_the_bow(tmp_path, cache):
    """`task=asr model=las_whisper` (the shipped checkpoint) end to end on the inline backend:
    WER per round, RLG rows scored on every client's update."""
    from fedsim.config import compose_config
    from fedsim.logs import load
    from fedsim.simulation import run_experiment

    cfg = compose_config(
        ["backend=inline", "task=asr", "model=las_whisper", "task.corpus=tiny",
         f"task.cache_dir={cache}", "task.eval_utterances=4", "fl.clients=2", "fl.rounds=2",
         "fl.batch_size=2", "fl.lr=0.05", "attack=[rlg]", "device=cpu"]
    )  # fmt: skip
    logs = load(run_experiment(cfg, tmp_path / "run"))
    rows = logs.attacks
    assert len(rows) == 4 and set(rows["status"]) == {"ok"}
    assert rows["f1"].min() >= 0.9
    assert logs.rounds["wer"].notna().all() and logs.rounds["wer"].iloc[-1] < 0.5

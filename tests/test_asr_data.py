"""ASR data: transcript normalisation, the tiny real corpus, word pieces, WER."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fedsim.asr.corpus import load_corpus
from fedsim.asr.metrics import word_error_rate
from fedsim.asr.text import normalise, number_words
from fedsim.asr.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_tokenizer


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """The tiny corpus, built once per session (every test file uses the same cache folder)."""
    return load_corpus("tiny", tmp_path_factory.getbasetemp() / "fedsim-asr", progress=False)


def test_normalise_known_answers():
    assert normalise("Press 1 to exit.") == "press one to exit"
    assert normalise("Call-Forward on Busy.") == "call forward on busy"
    assert normalise("If you know your party's extension, dial 42") == (
        "if you know your party's extension dial forty two"
    )
    assert normalise("He said \"yes\" to 'them'") == "he said yes to them"
    assert normalise("dial 1234 now") is None  # ambiguous reading
    assert normalise("press # to quit") is None
    assert normalise("...") is None
    assert [number_words(n) for n in (0, 13, 20, 99)] == [
        "zero",
        "thirteen",
        "twenty",
        "ninety nine",
    ]
    with pytest.raises(ValueError, match=r"0\.\.99"):
        number_words(100)


def test_tiny_corpus_is_real_and_cached(tiny_corpus, tmp_path_factory):
    c = tiny_corpus
    sources = {u.source for u in c.utterances}
    assert sources == {"asterisk", "librivox", "flite"}
    assert sum(u.source == "librivox" for u in c.utterances) == 5
    assert len({u.speaker for u in c.utterances}) >= 4
    assert len(c.indices("test")) >= 1 and len(c.indices("train")) >= 20
    assert set(c.indices("test")).isdisjoint(c.indices("train"))
    for i, u in enumerate(c.utterances):
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", u.text), u.text
        f = c.feature(i)
        assert f.shape == (u.frames, 40) and np.isfinite(f).all()
        assert 0.2 < u.seconds < 16
    assert any("mister john dashwood" in u.text for u in c.utterances)  # LibriVox transcript

    def stamps():  # a rebuild writes a new folder and renames it over the cached one
        files = [c.root / "info.json", c.root / "features.npy"]
        return [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]

    before = stamps()
    again = load_corpus("tiny", tmp_path_factory.getbasetemp() / "fedsim-asr", progress=False)
    assert again.root == c.root and stamps() == before  # cache hit: nothing rebuilt
    assert again.info == c.info and again.utterances == c.utterances


def test_tokenizer_round_trip_and_specials(tiny_corpus):
    tok = train_tokenizer(tiny_corpus.text_path, 1000)
    assert tok.vocab_size == 1000
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    for u in tiny_corpus.utterances:
        ids = tok.encode(u.text)
        assert tok.decode(ids) == u.text
        assert min(ids) > EOS_ID  # no special token inside a transcript, no unk
        assert tok.targets(u.text) == [*ids, EOS_ID]
        assert tok.decode([BOS_ID, *ids, EOS_ID, 7, PAD_ID]) == u.text


def test_tokenizer_too_large_vocab_names_the_limit(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"at most \d+ pieces"):
        train_tokenizer(tiny_corpus.text_path, 200_000, out_dir=tmp_path)


def test_word_error_rate_known_answers():
    assert word_error_rate(["a b c", "d e"], ["a b", ""]) == pytest.approx(3 / 5)
    assert word_error_rate(["a b"], ["a b"]) == 0.0
    assert word_error_rate(["a"], ["b c"]) == 2.0
    with pytest.raises(ValueError, match="empty reference"):
        word_error_rate([""], ["a"])

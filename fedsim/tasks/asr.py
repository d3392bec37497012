"""Speech recognition: the offline corpus, word pieces and a LAS model, trained by local SGD.

Targets and the RLG truth: for a transcript of word pieces p1..pn the decoder reads
`[bos, p1..pn]` and the loss (cross entropy, mean over the batch's target tokens, pad ignored)
is taken on `[p1..pn, eos]`. These ids, per step and per utterance, are `Truth.tokens`, so
`Truth.label_set` (BoW) holds every piece of the transcripts plus eos (3), and never pad (0),
bos (2) or unk (1). The number of target tokens (pieces + 1 per utterance) is the rank RLG sees
on the update of the projection `output.weight` `(vocab, dec_hidden + 2 * enc_hidden)`.

Inputs (the model node's `features`): "log_mel", the corpus's 40 log-mel bands every 10 ms, or
"whisper_encoder", the frozen Whisper tiny.en encoder's states (384-d every 40 ms, cached once per
corpus by `fedsim.asr.whisper.encoder_features`; `model=las_whisper`). A node may also name a
checkpoint folder (`pretrained`: a name shipped in `fedsim/asr/pretrained/` or a path): its word
pieces are then the task's vocabulary, and with `init: pretrained` the model starts from its
weights (`fedsim.asr.pretrained`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache, partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedcore import SpeechSpec, Truth
from fedcore.sgd import sgd_step
from fedsim.asr.corpus import HOP, SAMPLE_RATE, Corpus, load_corpus
from fedsim.asr.metrics import word_error_rate
from fedsim.asr.model import LAS, LAS_DECODER, OUTPUT_LAYER, pad_batch
from fedsim.asr.pretrained import checkpoint_folder, load_state, read_info
from fedsim.asr.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from fedsim.asr.whisper.features import Ragged
from fedsim.models import model_builder
from fedsim.tasks.base import TrainConfig, TrainResult

__all__ = ["AsrTask"]

Steps = tuple[tuple[tuple[int, ...], ...], ...]
FEATURES = {"log_mel": HOP / SAMPLE_RATE, "whisper_encoder": 4 * HOP / SAMPLE_RATE}  # s per frame
INITS = ("scratch", "pretrained")


def speech_options(model: Any) -> tuple[Any, str, str, str | None]:
    """`(model node without them, features, init, pretrained)`: the keys of a speech model node
    that the task reads (see the module docstring); a builder gets the defaults."""
    if not isinstance(model, Mapping):
        return model, "log_mel", "scratch", None
    node = dict(model)
    features = node.pop("features", "log_mel")
    init = node.pop("init", "scratch")
    pretrained = node.pop("pretrained", None)
    if features not in FEATURES:
        raise ValueError(f"unknown model.features {features!r}; use one of {sorted(FEATURES)}")
    if init not in INITS:
        raise ValueError(f"unknown model.init {init!r}; use 'pretrained' or 'scratch'")
    if init == "pretrained" and not pretrained:
        raise ValueError("model.init=pretrained needs model.pretrained (a checkpoint folder)")
    return node, features, init, pretrained


class AsrTask:
    """Speech recognition on the offline corpus (`fedsim.asr.corpus`) with a LAS model.

    Args:
        corpus: corpus size, "tiny", "small" or "default" (built into the cache on first use).
        vocab_size: word pieces including the 4 special tokens (1000 default; up to 31,532).
        model: the model node (`conf/model/las.yaml`: `_target_: fedsim.asr.model.LAS`, the LAS
            sizes, `task: asr`; the task's own keys `features`, `init`, `pretrained`: see the
            module docstring) or a builder; the task adds `vocab_size`, `n_mels` (the input
            frame size) and the special token ids. Default: `LAS` with its default sizes.
        partition: "speaker" (non-IID: train utterances sorted by speaker/voice, then cut into
            contiguous equal parts, so a client holds one or a few voices) or "iid".
        eval_utterances: test utterances per evaluation (a fixed seeded subset; 0 = all).
        seed: seeds partitions and the evaluation subset.
        cache_dir: corpus cache (default `$FEDSIM_CACHE` or `~/.cache/fedsim`).
    """

    name = "asr"
    default_model = "fedsim.asr.model.LAS"  # the `_target_` built when no model node is given

    def __init__(
        self,
        corpus: str = "default",
        vocab_size: int = 1000,
        model: Mapping[str, Any] | Callable[..., LAS] | None = None,
        partition: str = "speaker",
        eval_utterances: int = 64,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        if partition not in ("speaker", "iid"):
            raise ValueError(f"unknown partition {partition!r}; use 'speaker' or 'iid'")
        self.partition, self.seed, self.eval_utterances = partition, seed, eval_utterances
        model = {"_target_": self.default_model} if model is None else model
        model, self.features, self.init, pretrained = speech_options(model)
        self.pretrained = checkpoint_folder(pretrained) if pretrained else None
        self.model_name, self._build = model_builder(model, self.name)
        self.corpus: Corpus = load_corpus(corpus, cache_dir)
        self.inputs = self._inputs()
        self.tokenizer = self._make_tokenizer(vocab_size)
        self.targets = [tuple(self.tokenizer.targets(u.text)) for u in self.corpus.utterances]
        self.max_target_tokens = max(map(len, self.targets))

    def _inputs(self) -> Ragged:
        """Per-utterance model inputs `(frames, dim)`: log-mel bands or Whisper encoder states."""
        if self.features == "whisper_encoder":
            from fedsim.asr.whisper.encoder_features import encoder_states

            return encoder_states(self.corpus)
        ends = [u.offset + u.frames for u in self.corpus.utterances[-1:]]
        offsets = np.array([u.offset for u in self.corpus.utterances] + ends, dtype=np.int64)
        return Ragged(self.corpus.features, offsets)

    def _make_tokenizer(self, vocab_size: int) -> Tokenizer:
        """The word pieces: the checkpoint's (`pretrained`), else trained on the corpus's text
        (`vocab_size` ids incl. specials)."""
        shipped = self.pretrained / "tokenizer.model" if self.pretrained else None
        if shipped is None or not shipped.exists():
            if self.init == "pretrained":
                load_state(self.pretrained)  # raises: says how to make the checkpoint
            return train_tokenizer(self.corpus.text_path, vocab_size)
        tokenizer = load_tokenizer(shipped)
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(
                f"the checkpoint {self.pretrained.name} has {tokenizer.vocab_size} word pieces, "
                f"not vocab_size={vocab_size}; set task.vocab_size={tokenizer.vocab_size}"
            )
        return tokenizer

    # ------------------------------------------------------------------ model
    def model_spec(self) -> SpeechSpec:
        tok = self.tokenizer
        return SpeechSpec(
            task=self.name,
            name=self.model_name,
            num_classes=tok.vocab_size,
            last_weight=f"{OUTPUT_LAYER}.weight",
            last_bias=f"{OUTPUT_LAYER}.bias",
            build=partial(self.build_model),
            input_shape=None,
            protocol_labels=(tok.eos_id,),  # every target ends with eos
            max_labels_per_sample=self.max_target_tokens,
            pad_id=tok.pad_id, unk_id=tok.unk_id, bos_id=tok.bos_id, eos_id=tok.eos_id,
            tokenizer_path=str(tok.path),
            decoder=LAS_DECODER,
        )  # fmt: skip

    def build_model(self) -> LAS:
        """The model: random (`init: scratch`) or the checkpoint's weights (`init: pretrained`)."""
        tok = self.tokenizer
        model = self._build(vocab_size=tok.vocab_size, n_mels=self.inputs.dim, pad_id=tok.pad_id,
                            bos_id=tok.bos_id, eos_id=tok.eos_id)  # fmt: skip
        if self.init == "pretrained":
            model.load_state_dict(load_state(self.pretrained))
        return model

    def pretrained_info(self) -> dict[str, Any]:
        """The checkpoint's `info.json` (empty without a checkpoint)."""
        return read_info(self.pretrained) if self.pretrained else {}

    # ------------------------------------------------------------------ data
    @cache  # noqa: B019 (one task object per process)
    def partitions(self, num_partitions: int) -> list[np.ndarray]:
        """Disjoint, non-empty index arrays into the corpus (train split), one per client."""
        train = self.corpus.indices("train")
        if not 1 <= num_partitions <= len(train):
            raise ValueError(f"num_partitions must be in [1, {len(train)}], got {num_partitions}")
        if self.partition == "iid":
            order = np.random.default_rng(self.seed).permutation(train)
        else:
            utts = self.corpus.utterances
            order = np.array(sorted(train, key=lambda i: (utts[i].speaker, utts[i].uid)))
        return [np.sort(p) for p in np.array_split(order, num_partitions)]

    def batch(self, indices, device: torch.device | str = "cpu"):
        """Padded tensors `(feats, lengths, decoder inputs, targets)` of corpus utterances."""
        feats = [self.inputs.rows(int(i)) for i in indices]
        targets = [list(self.targets[int(i)]) for i in indices]
        x, lengths, inp, y = pad_batch(feats, targets, self.tokenizer.pad_id, self.tokenizer.bos_id)
        return x.to(device), lengths, inp.to(device), y.to(device)

    def loss(self, model: LAS, indices, device="cpu", label_smoothing: float = 0.0):
        """Teacher-forced cross entropy, mean over the target tokens of the utterances."""
        x, lengths, inp, y = self.batch(indices, device)
        logits = model(x, lengths, inp)
        return F.cross_entropy(
            logits.flatten(0, 1), y.flatten(), ignore_index=self.tokenizer.pad_id,
            label_smoothing=label_smoothing,
        )  # fmt: skip

    def sgd_steps(
        self, model: LAS, steps, lr: float, device="cpu", label_smoothing: float = 0.0
    ) -> tuple[list[float], Steps]:
        """Plain SGD in place, one step per list of utterance indices in `steps`.
        Returns the losses and the target token ids per step per utterance (the truth)."""
        model.to(device).train()
        losses = []
        for indices in steps:
            loss = self.loss(model, indices, device, label_smoothing)
            sgd_step(model, loss, lr)
            losses.append(float(loss.detach()))
        tokens = tuple(tuple(self.targets[int(i)] for i in step) for step in steps)
        return losses, tokens

    # ------------------------------------------------------------------ Task protocol
    def local_train(
        self,
        model: torch.nn.Module,
        partition_id: int,
        num_partitions: int,
        config: TrainConfig,
        device: torch.device,
    ) -> TrainResult:
        """K steps of N utterances drawn from the partition (seeded by seed, round, partition)."""
        if config.mixup_alpha > 0:
            raise ValueError("mixup is not defined for speech recognition; set mixup_alpha: 0")
        own = self.partitions(num_partitions)[partition_id]
        k, n = config.local_steps, config.batch_size
        rng = np.random.default_rng([config.seed, config.round, partition_id])
        picks = rng.choice(own, size=(k, n), replace=len(own) < k * n)
        losses, tokens = self.sgd_steps(model, picks, config.lr, device, config.label_smoothing)
        truth = Truth(labels=np.zeros((k, 0), dtype=np.int64), tokens=tokens)
        return TrainResult(k * n, {"train_loss": float(np.mean(losses))}, truth)

    def eval_indices(self) -> np.ndarray:
        """The evaluation subset of the test split (seeded), ordered by duration (less padding)."""
        test = self.corpus.indices("test")
        if 0 < self.eval_utterances < len(test):
            rng = np.random.default_rng(self.seed)
            test = rng.choice(test, self.eval_utterances, replace=False)
        return np.array(sorted(test, key=lambda i: (self.corpus.utterances[i].frames, i)), int)

    @torch.no_grad()
    def transcribe(self, model: LAS, indices, device="cpu", batch_size: int = 16) -> list[str]:
        """Greedy transcripts of corpus utterances (the transcripts are not used)."""
        model.to(device).eval()
        out = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            x, lengths, _, _ = self.batch(chunk, device)
            # At most one piece per 80 ms of audio (speech has about one per 200 ms).
            seconds = int(lengths.max()) * FEATURES[self.features]
            ids = model.greedy(x, lengths, max_len=int(seconds / 0.08) + 5)
            out += [self.tokenizer.decode(seq) for seq in ids]
        return out

    eval_batch = 16  # utterances per forward pass in `evaluate`

    def _summed_loss(self, model: torch.nn.Module, chunk, device) -> tuple[float, int]:
        """(summed teacher-forced cross-entropy, scored tokens) of a chunk of utterances."""
        x, lengths, inp, y = self.batch(chunk, device)
        logits = model(x, lengths, inp)
        pad = self.tokenizer.pad_id
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=pad, reduction="sum")
        return float(loss), int((y != pad).sum())

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Token-mean teacher-forced loss and greedy WER on the evaluation subset (test split)."""
        idx = self.eval_indices()
        model.to(device).eval()
        step = self.eval_batch
        chunks = [idx[i : i + step] for i in range(0, len(idx), step)]
        sums = [self._summed_loss(model, chunk, device) for chunk in chunks]
        hyps = self.transcribe(model, idx, device)
        refs = [self.corpus.utterances[int(i)].text for i in idx]
        loss = sum(total for total, _ in sums) / sum(count for _, count in sums)
        return {"loss": loss, "wer": word_error_rate(refs, hyps)}

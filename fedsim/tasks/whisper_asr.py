"""Speech recognition by fine-tuning Whisper tiny.en (`task=asr model=whisper_tiny`).

The same corpus, partitions and client sampling as `AsrTask` (`task=asr` builds this subclass
when the model node is `fedsim.asr.whisper.finetune.whisper_tiny`: `fedsim.tasks.asr_tasks`),
but Whisper's own parts: its 80-mel front end (stored with the corpus,
`fedsim.asr.whisper.features`), its byte-level BPE (51,864 ids) and teacher forcing
(`fedsim.asr.whisper.finetune`). Targets and the truth: a
transcript's text ids (written as Whisper writes: capital first letter, final period) then eot,
so `Truth.label_set` = the BoW of text ids plus eot.

The RLG target is `decoder.token_embedding.weight` (51,864 x 384): the output projection, tied
to the input embedding (no bias). Its update mixes the output gradient (every row) and the input
gradient of the tokens read; `attack=tied_bow` reads the BoW from the latter.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from fedcore import SpeechSpec
from fedsim.asr.text import normalise
from fedsim.asr.whisper.decoding import greedy_decode
from fedsim.asr.whisper.features import padded, whisper_mels
from fedsim.asr.whisper.finetune import IGNORE, OUTPUT_WEIGHT, teacher_forcing
from fedsim.asr.whisper.model import Whisper
from fedsim.asr.whisper.tokenizer import WhisperTokenizer
from fedsim.asr.whisper.weights import tiny_en_dir
from fedsim.tasks.asr import AsrTask

__all__ = ["WhisperAsrTask"]


class WhisperAsrTask(AsrTask):
    """Federated fine-tuning of Whisper tiny.en on the offline corpus.

    Args: as `AsrTask`; `vocab_size` is not used (Whisper has its own vocabulary).
    """

    default_model = "fedsim.asr.whisper.finetune.whisper_tiny"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mels = whisper_mels(self.corpus)

    def _make_tokenizer(self, vocab_size: int) -> WhisperTokenizer:
        """Whisper's own byte-level BPE (51,864 ids); `vocab_size` is not used."""
        return WhisperTokenizer.from_dir(tiny_en_dir())

    def model_spec(self) -> SpeechSpec:
        tok = self.tokenizer
        return SpeechSpec(
            task=self.name,
            name=self.model_name,
            num_classes=tok.vocab_size,
            last_weight=OUTPUT_WEIGHT,
            last_bias=None,
            build=partial(self.build_model),
            input_shape=None,
            protocol_labels=tok.protocol_labels,  # every target ends with ". <eot>"
            max_labels_per_sample=self.max_target_tokens,
            pad_id=tok.eot, unk_id=tok.eot, bos_id=tok.sot, eos_id=tok.eot,
            tokenizer_path=str(tok.path),
            decoder=None,  # not an LSTM step: the transcript attack does not apply
        )  # fmt: skip

    def build_model(self) -> Whisper:
        return self._build()

    def batch(self, indices, device: torch.device | str = "cpu", frames: int | None = 3000):
        """Log-mel `(B, 80, frames)` (None: the longest utterance's, made even), decoder inputs
        and scored targets `(B, L)` of corpus utterances."""
        mels = [self.mels[int(i)] for i in indices]
        width = frames or max(m.shape[1] + m.shape[1] % 2 for m in mels)
        x = torch.stack([padded(m, width) for m in mels])
        texts = [list(self.targets[int(i)][:-1]) for i in indices]
        inputs, targets = teacher_forcing(texts, self.tokenizer.prompt, self.tokenizer.eot)
        return x.to(device), inputs.to(device), targets.to(device)

    def loss(self, model: Whisper, indices, device="cpu", label_smoothing: float = 0.0):
        """Teacher-forced cross entropy, mean over the scored target tokens of the utterances."""
        x, inputs, targets = self.batch(indices, device, model.input_frames)
        logits = model(x, inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                               label_smoothing=label_smoothing)  # fmt: skip

    @torch.no_grad()
    def transcribe(self, model: Whisper, indices, device="cpu", batch_size: int = 8) -> list[str]:
        """Greedy transcripts of corpus utterances, normalised like the references."""
        model.to(device).eval()
        out = []
        for start in range(0, len(indices), batch_size):
            x, _, _ = self.batch(indices[start : start + batch_size], device, model.input_frames)
            for ids in greedy_decode(model, x, self.tokenizer, max_tokens=self.max_target_tokens):
                out.append(normalise(self.tokenizer.decode(ids)) or "")
        return out

    eval_batch = 8

    def _summed_loss(self, model: Whisper, chunk, device) -> tuple[float, int]:
        x, inputs, targets = self.batch(chunk, device, model.input_frames)
        logits = model(x, inputs)
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        return float(loss), int((targets != IGNORE).sum())


def is_whisper(model: Any) -> bool:
    """Whether a task's model node (or builder) is the Whisper fine-tuning builder."""
    target = model.get("_target_") if isinstance(model, Mapping) else getattr(model, "func", model)
    name = target if isinstance(target, str) else getattr(target, "__qualname__", "")
    return str(name).rsplit(".", 1)[-1] == "whisper_tiny"

"""Transcript reconstruction plugin ("transcript"): RLG's bag of words and length + gradient
matching on the decoder (`attacks.transcript.reconstruct_transcript`).

Needs one SGD step on one utterance (batch_size 1, local_steps 1) of the speech task. Reads
`findings["rlg"]` (a `LabelSet`: `labels` = the BoW, `num_labels` = S, estimated by RLG, never
taken from the truth), the global model `view.global_module()` and the gradient
`-view.update / view.lr`. No exception is caught here: the observer isolates failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attacks.transcript import TranscriptOptions, decoder_gradients, reconstruct_transcript
from fedcore import Finding, SpeechSpec, not_applicable, single_sample_reason

if TYPE_CHECKING:
    from fedcore import ModelSpec, ServerView

__all__ = ["TranscriptAttack"]


class TranscriptAttack:
    """Reconstruct the transcript of a one-utterance update.

    Args:
        use_bow: True restricts the labels to RLG's BoW; False is the baseline over the whole
            vocabulary (the length still comes from RLG).
        init: "span" (default; exact row-space decoding starts restart 0, beyond the paper) or
            "random" (the paper: random restarts only).
        fallback: when the BoW run does not match the gradient (distance >= tol: RLG's BoW
            misses a piece, as at a trained model), rerun over the whole vocabulary and keep
            the smaller distance (beyond the paper; False: the BoW result as it is).
        tokenizer_path: optional sentencepiece model file, to decode and score the text; when
            empty, `SpeechSpec.tokenizer_path` (set by the speech task) is used when
            that file exists on the server; otherwise the scores are over word pieces.
        options: further fields of `attacks.transcript.TranscriptOptions` (restarts, steps,
            lr, ...).
    """

    name = "transcript"
    requires = ("rlg",)

    def __init__(
        self,
        use_bow: bool = True,
        init: str = "span",
        fallback: bool = True,
        tokenizer_path: str = "",
        **options: Any,
    ) -> None:
        self.use_bow = bool(use_bow)
        self.options = TranscriptOptions(init=str(init), fallback=bool(fallback), **options)
        self.tokenizer_path = str(tokenizer_path or "")
        self._tokenizers: dict[str, Any] = {}

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        if not isinstance(model, SpeechSpec):
            return (
                f"transcript reconstruction needs a speech model (task 'asr'), got {model.task!r}"
            )
        if model.decoder is None:
            return f"the speech model {model.name!r} names no decoder parameters (decoder=None)"
        return single_sample_reason("transcript reconstruction", train_config)

    def _tokenizer(self, view: ServerView) -> Any:
        spec = view.model
        assert isinstance(spec, SpeechSpec)  # check() has refused every other spec
        path = self.tokenizer_path or spec.tokenizer_path
        if not path:
            return None
        if not Path(path).is_file():
            if self.tokenizer_path:  # asked for explicitly: say so
                raise FileNotFoundError(
                    f"tokenizer_path {path!r} does not exist: pass the sentencepiece .model file "
                    "of the task (fedsim.asr.tokenizer), or leave it empty"
                )
            return None  # the task's file is not on this machine (deployment): token scores
        if path not in self._tokenizers:
            import sentencepiece as spm

            processor = spm.SentencePieceProcessor(model_file=path)
            skip = (spec.pad_id, spec.bos_id)
            self._tokenizers[path] = _SpmText(processor, spec.eos_id, skip)
        return self._tokenizers[path]

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        reason = self.check(view.model, view.train_config)
        if reason:
            return not_applicable(reason)
        rlg = findings.get("rlg")
        if rlg is None:
            return not_applicable("needs RLG's finding (add attack 'rlg' before 'transcript')")
        if not rlg.ok:
            return not_applicable(f"RLG found no label set: {rlg.message}")
        labels, length = getattr(rlg, "labels", ()), getattr(rlg, "num_labels", None)
        if not labels or not length:
            return not_applicable("RLG's finding has no labels or no estimated length num_labels")
        spec = view.model
        assert isinstance(spec, SpeechSpec) and spec.decoder is not None  # check() refused others
        decoder = spec.decoder
        return reconstruct_transcript(
            view.global_module(),
            decoder_gradients(view.update, view.lr, decoder),
            labels if self.use_bow else None,
            int(length),
            decoder,
            self.options,
            label_smoothing=float(view.train_config.get("label_smoothing", 0.0) or 0.0),
            tokenizer=self._tokenizer(view),
        )


class _SpmText:
    """`decode(ids) -> str` of a sentencepiece model: stops at eos, skips pad and bos."""

    def __init__(self, processor: Any, eos_id: int, skip: tuple[int, ...]) -> None:
        self.processor, self.eos_id, self.skip = processor, eos_id, skip

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i not in self.skip:
                out.append(int(i))
        return self.processor.decode(out)

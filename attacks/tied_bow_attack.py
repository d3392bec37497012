"""`attack=tied_bow`: the bag of words of a speech batch from a TIED embedding's update.

For a decoder whose output projection is its input token embedding (Whisper: the spec's
`last_weight` is `decoder.token_embedding.weight`), the rows of the tokens the decoder read carry
an input gradient outside the span of the output gradient (`attacks.tied_embedding`). Read tokens
= the prompt + every transcript token; the labels = the transcript tokens + the protocol's eos.
So the label set is the read-out minus the prompt plus `ModelSpec.protocol_labels` (Whisper's
targets end with ". <eot>": eot is read only as padding, and the final period, read just before
an eot the model predicts with near certainty, gets almost no input gradient).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attacks.labelset import LabelSet
from attacks.tied_embedding import read_tokens
from fedcore import Finding, ModelSpec, ServerView, SpeechSpec, not_applicable
from fedcore.tensors import to_numpy

__all__ = ["TiedBowAttack", "template_prompt"]


def template_prompt(tokenizer_path: str) -> tuple[int, ...]:
    """The special ids a Hugging Face `tokenizer.json` puts before the text (its post-processor
    template: Whisper's sot, notimestamps); () when the file has no such template."""
    path = Path(tokenizer_path)
    if path.suffix != ".json" or not path.exists():
        return ()
    data = json.loads(path.read_text())
    ids = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    prompt = []
    for item in (data.get("post_processor") or {}).get("single", []):
        if "SpecialToken" not in item:
            break
        prompt.append(ids[item["SpecialToken"]["id"]])
    return tuple(prompt)


class TiedBowAttack:
    """The label set (BoW + protocol labels) of a tied-embedding decoder's update.

    Args:
        prompt: the ids the decoder reads before the text; None: the tokenizer's template
            (`template_prompt`), else the spec's bos id.
        min_gap: below this residual gap the split is not trusted (`not_applicable`).
        options: further keyword options of `attacks.tied_embedding.read_tokens`.
    """

    name = "tied_bow"

    def __init__(self, prompt: list[int] | None = None, min_gap: float = 10.0, **options: Any):
        self.prompt = None if prompt is None else tuple(int(p) for p in prompt)
        self.min_gap, self.options = float(min_gap), options

    def check(self, model: ModelSpec, train_config: Mapping[str, Any]) -> str | None:
        if not isinstance(model, SpeechSpec):
            return f"tied_bow reads a speech decoder's embedding, got task {model.task!r}"
        if model.last_bias is not None:
            return f"tied_bow needs a tied embedding (no bias); {model.name} has {model.last_bias}"
        return None

    def _prompt(self, spec: SpeechSpec) -> tuple[int, ...]:
        if self.prompt is not None:
            return self.prompt
        return template_prompt(spec.tokenizer_path) or (spec.bos_id,)

    def __call__(self, view: ServerView, findings: Mapping[str, Finding]) -> Finding:
        spec = view.model
        assert isinstance(spec, SpeechSpec)  # check() refused every other spec
        weight, _ = view.last_layer_update()
        w = to_numpy(weight, floating=True)
        if not w.any():
            return not_applicable("the embedding update is all zero")
        prompt = self._prompt(spec)
        read = read_tokens(w, known=prompt, unread=(spec.eos_id,), **self.options)
        diagnostics = {"rank": read.rank, "gap": read.gap, "read": len(read.tokens)}
        if read.gap < self.min_gap:
            return not_applicable(f"no clear residual gap ({read.gap:.3g} < {self.min_gap})",
                                  **diagnostics)  # fmt: skip
        labels = (set(read.tokens) - set(prompt)) | {int(p) for p in spec.protocol_labels}
        return LabelSet(labels=tuple(sorted(labels)), diagnostics=diagnostics)

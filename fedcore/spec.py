"""What the server knows about the architecture it distributes (`ModelSpec`, `SpeechSpec`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["DecoderParams", "ModelSpec", "SpeechSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """What the server knows about the architecture it distributes.

    Attributes:
        task: "image" or "asr".
        name: the model's name (e.g. "lenet").
        num_classes: C, the output size of the last layer (classes or word pieces).
        last_weight: parameter name of the last linear layer's weight, layout `(C, d)`.
        last_bias: parameter name of its bias `(C,)`, or None when the layer has none.
        build: returns a fresh `nn.Module` of this architecture (weights arbitrary; load a
            state dict to get the global model).
        input_shape: shape of one input sample, e.g. `(1, 28, 28)`; None for variable-length input.
        protocol_labels: labels that every sample carries by the task's protocol (speech: eos);
            a server knows them without looking at any update.
        max_labels_per_sample: the most label occurrences one sample can hold (speech: the
            longest target in tokens); None when not bounded beyond one (images).
    """

    task: str
    name: str
    num_classes: int
    last_weight: str
    last_bias: str | None
    build: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...] | None = None
    protocol_labels: tuple[int, ...] = ()
    max_labels_per_sample: int | None = None


@dataclass(frozen=True)
class DecoderParams:
    """Parameter names of an attention decoder's step (LSTM cell over `[embed(y); context]`).

    Attributes:
        embed: the token embedding weight `(V, e)`.
        cell: prefix of the `nn.LSTMCell` (its `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`).
        attention_query: prefix of the attention's query projection of the decoder state
            (its `weight` and `bias`).
        output: prefix of the output projection `(V, d)` over `[state; context]`.
    """

    embed: str
    cell: str
    attention_query: str
    output: str


@dataclass(frozen=True)
class SpeechSpec(ModelSpec):
    """A speech model's spec: special token ids, the tokenizer and the decoder's parameter names.

    Attributes:
        pad_id, unk_id, bos_id, eos_id: special word-piece ids (targets end with eos).
        tokenizer_path: the sentencepiece model file on the server's machine ("" when unknown).
        decoder: names of the decoder step's parameters (`DecoderParams`), for attacks that
            replay it; None when the model has no such decoder.
    """

    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    tokenizer_path: str = ""
    decoder: DecoderParams | None = None

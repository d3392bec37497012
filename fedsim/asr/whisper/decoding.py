"""Greedy decoding of Whisper (English-only, no timestamps)."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.asr.whisper.model import Whisper
from fedsim.asr.whisper.tokenizer import WhisperTokenizer

__all__ = ["greedy_decode"]


@torch.no_grad()
def greedy_decode(
    model: Whisper, mel: Tensor, tokenizer: WhisperTokenizer, max_tokens: int = 100
) -> list[list[int]]:
    """Text ids (no special tokens, without eot) of each log-mel `(B, n_mels, T)`.

    Starts from `tokenizer.prompt`; suppresses the ids of `config.json` (and a blank or eot at the
    first step) and every special id except eot; stops each utterance at eot."""
    audio = model.encoder(mel)
    cross = model.decoder.cross_kv(audio)
    b = mel.shape[0]
    tokens = torch.tensor([tokenizer.prompt] * b, device=mel.device)
    always, begin = tokenizer.suppressed
    mask = torch.zeros(model.dims.n_vocab, dtype=torch.bool, device=mel.device)
    mask[list(always)] = True
    mask[tokenizer.eot + 1 :] = True
    done = torch.zeros(b, dtype=torch.bool, device=mel.device)
    for step in range(max_tokens):
        logits = model.decoder.hidden(tokens, cross)[:, -1] @ model.decoder.token_embedding.weight.T
        logits = logits.masked_fill(mask, float("-inf"))
        if step == 0:
            logits[:, list(begin)] = float("-inf")
        nxt = logits.argmax(-1).masked_fill(done, tokenizer.eot)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == tokenizer.eot
        if bool(done.all()):
            break
    out = []
    for row in tokens[:, len(tokenizer.prompt) :].tolist():
        out.append(row[: row.index(tokenizer.eot)] if tokenizer.eot in row else row)
    return out

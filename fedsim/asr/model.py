"""A Listen-Attend-Spell encoder-decoder over log-mel features.

Listener: two 3x3 stride-2 convolutions (time and frequency / 4), layer norm, a bidirectional
LSTM; with `front_end="none"` (inputs that are already encoder states, e.g. the frozen Whisper
encoder's at 25 Hz for `model=las_whisper`) layer norm and the BiLSTM alone. Attender:
additive attention `e_tj = v^T tanh(W_s s_t + W_h h_j)`, softmax over valid frames. Speller: an
LSTM cell (zero initial state) fed `[embed(y_{t-1}); c_{t-1}]`, and the output projection
`output` (`nn.Linear(dec_hidden + 2 * enc_hidden, vocab)`) mapping `[s_t; c_t]` to logits.
`output.weight` `(vocab, d)` is the layer the RLG attack reads: its gradient is
`sum_t (softmax_t - onehot(y_t)) [s_t; c_t]^T / T` over the T target positions t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fedcore import DecoderParams

__all__ = ["LAS", "LAS_DECODER", "OUTPUT_LAYER", "pad_batch", "sequence_loss"]

OUTPUT_LAYER = "output"  # module name of the output projection (the RLG target)
# The decoder step's parameter names, for attacks that replay it (transcript reconstruction).
LAS_DECODER = DecoderParams(
    embed="embed.weight", cell="decoder", attention_query="att_s", output=OUTPUT_LAYER
)


class LAS(nn.Module):
    """LAS model. Input features `(B, T, n_mels)` with lengths `(B,)`; targets padded with pad_id.

    `n_mels` is the size of an input frame (40 log-mel bands; 384 for Whisper encoder states).
    `front_end`: "conv" (two stride-2 convolutions, T/4 frames) or "none" (frames as given).
    Default size (about 1.6M parameters at 1k pieces) trains on 2 CPU cores.
    """

    def __init__(
        self,
        vocab_size: int,
        n_mels: int = 40,
        enc_hidden: int = 128,
        enc_layers: int = 1,
        dec_hidden: int = 256,
        embed_dim: int = 64,
        att_dim: int = 128,
        channels: int = 32,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        front_end: str = "conv",
    ) -> None:
        super().__init__()
        if front_end not in ("conv", "none"):
            raise ValueError(f"unknown LAS front_end {front_end!r}; use 'conv' or 'none'")
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.subsample = 4 if front_end == "conv" else 1
        width = n_mels
        if front_end == "conv":
            self.conv = nn.Sequential(
                nn.Conv2d(1, channels, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                nn.ReLU(),
            )
            width = channels * ((n_mels + 3) // 4)
        self.conv_norm = nn.LayerNorm(width)
        self.encoder = nn.LSTM(width, enc_hidden, enc_layers, batch_first=True, bidirectional=True)
        enc_dim = 2 * enc_hidden
        self.att_h = nn.Linear(enc_dim, att_dim, bias=False)
        self.att_s = nn.Linear(dec_hidden, att_dim)
        self.att_v = nn.Linear(att_dim, 1, bias=False)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.decoder = nn.LSTMCell(embed_dim + enc_dim, dec_hidden)
        self.output = nn.Linear(dec_hidden + enc_dim, vocab_size)

    # ------------------------------------------------------------------ listener
    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder states `(B, T', 2*enc_hidden)` and a validity mask `(B, T')`, T' ~ T/4 (T with
        `front_end="none"`)."""
        out_len = lengths.cpu()
        if self.subsample == 1:
            x = self.conv_norm(feats)
        else:
            x = self.conv(feats.unsqueeze(1))  # (B, C, T', F')
            b, c, t, f = x.shape
            x = self.conv_norm(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
            for _ in range(2):
                out_len = (out_len - 1) // 2 + 1
        t = x.shape[1]
        out_len = out_len.clamp(1, t)
        packed = pack_padded_sequence(x, out_len, batch_first=True, enforce_sorted=False)
        h, _ = self.encoder(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=t)
        mask = torch.arange(t)[None, :] < out_len[:, None]
        return h, mask.to(h.device)

    # ------------------------------------------------------------------ attender + speller
    def _attend(self, keys: Tensor, h: Tensor, mask: Tensor, s: Tensor) -> Tensor:
        e = self.att_v(torch.tanh(keys + self.att_s(s)[:, None, :])).squeeze(-1)  # (B, T')
        a = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=-1)
        return torch.bmm(a.unsqueeze(1), h).squeeze(1)  # (B, enc_dim)

    def _init_state(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Zero decoder state, cell and context. (A bridge from the encoder's final states made
        the decoder memorise training utterances instead of learning to attend.)"""
        s = h.new_zeros(h.shape[0], self.decoder.hidden_size)
        return s, torch.zeros_like(s), torch.zeros_like(h[:, 0])

    def forward(self, feats: Tensor, lengths: Tensor, inputs: Tensor) -> Tensor:
        """Teacher-forced logits `(B, L, vocab)` for decoder inputs `(B, L)` = [bos, pieces]."""
        h, mask = self.encode(feats, lengths)
        keys = self.att_h(h)
        s, cell, ctx = self._init_state(h)
        emb = self.embed(inputs)
        logits = []
        for t in range(inputs.shape[1]):
            s, cell = self.decoder(torch.cat([emb[:, t], ctx], -1), (s, cell))
            ctx = self._attend(keys, h, mask, s)
            logits.append(self.output(torch.cat([s, ctx], -1)))
        return torch.stack(logits, 1)

    @torch.no_grad()
    def greedy(self, feats: Tensor, lengths: Tensor, max_len: int = 80) -> list[list[int]]:
        """Greedy decoding: piece ids per utterance, without bos and eos."""
        h, mask = self.encode(feats, lengths)
        keys = self.att_h(h)
        s, cell, ctx = self._init_state(h)
        y = torch.full((h.shape[0],), self.bos_id, dtype=torch.long, device=h.device)
        done = torch.zeros_like(y, dtype=torch.bool)
        out = []
        for _ in range(max_len):
            s, cell = self.decoder(torch.cat([self.embed(y), ctx], -1), (s, cell))
            ctx = self._attend(keys, h, mask, s)
            y = self.output(torch.cat([s, ctx], -1)).argmax(-1)
            out.append(y)
            done |= y == self.eos_id
            if bool(done.all()):
                break
        seqs = torch.stack(out, 1).tolist()
        return [seq[: seq.index(self.eos_id)] if self.eos_id in seq else seq for seq in seqs]


def pad_batch(
    feats: list, targets: list[list[int]], pad_id: int, bos_id: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Collate utterances: features `(B, T, F)`, lengths `(B,)`, decoder inputs `(B, L)` =
    [bos, pieces] and targets `(B, L)` = [pieces, eos], both padded with pad_id.
    `targets[i]` must already end with eos."""
    lengths = torch.tensor([len(f) for f in feats])
    x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[-1])
    for i, f in enumerate(feats):
        x[i, : len(f)] = torch.as_tensor(f)
    width = max(len(t) for t in targets)
    y = torch.full((len(targets), width), pad_id, dtype=torch.long)
    inp = torch.full((len(targets), width), pad_id, dtype=torch.long)
    for i, t in enumerate(targets):
        y[i, : len(t)] = torch.tensor(t)
        inp[i, 0] = bos_id
        inp[i, 1 : len(t)] = torch.tensor(t[:-1])
    return x, lengths, inp, y


def sequence_loss(logits: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """Cross entropy averaged over the non-pad target tokens of the batch."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)

"""Whisper (OpenAI's encoder-decoder transformer for speech) in plain PyTorch.

Encoder: log-mel `(B, n_mels, T)` -> conv1 (k 3) + GELU -> conv2 (k 3, stride 2) + GELU -> plus
sinusoidal positions (the first T/2 rows) -> pre-LN blocks (self-attention, MLP 4x, GELU) ->
`ln_post`: audio states `(B, T/2, d)`. Decoder: token embedding + learned positions -> pre-LN
blocks (causal self-attention, cross-attention to the audio states, MLP) -> `ln` -> logits
`x @ token_embedding.weight^T`: the output projection IS the input token embedding (tied), so
`decoder.token_embedding.weight` `(n_vocab, d)` is both the RLG target and the input table.

Parameter names follow OpenAI's `whisper.model.Whisper`, so its official checkpoints load
strictly (`fedsim.asr.whisper.weights`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AudioEncoder", "TextDecoder", "Whisper", "WhisperDims", "sinusoids"]


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model (OpenAI's `ModelDimensions`; tiny.en's by default)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's encoder positions `(length, channels)`: [sin | cos] over log-spaced timescales."""
    half = channels // 2
    inc = math.log(max_timescale) / (half - 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class MultiHeadAttention(nn.Module):
    """Attention with separate q, k, v projections (k without bias) and an output projection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.value = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values `(B, heads, S, d / heads)` of `source` `(B, S, d)`."""
        return self._split(self.key(source)), self._split(self.value(source))

    def _split(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, x: Tensor, kv: tuple[Tensor, Tensor] | None = None, causal: bool = False
    ) -> Tensor:
        """`x` `(B, L, d)` attends to itself, or to precomputed keys/values `kv`."""
        k, v = self.kv(x) if kv is None else kv
        q = self._split(self.query(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(y.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: self-attention, optional cross-attention, MLP (d -> 4d -> d, GELU)."""

    def __init__(self, d: int, heads: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(d, heads)
        self.attn_ln = nn.LayerNorm(d)
        self.cross_attn = MultiHeadAttention(d, heads) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(d) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.mlp_ln = nn.LayerNorm(d)

    def forward(
        self, x: Tensor, cross_kv: tuple[Tensor, Tensor] | None = None, causal: bool = False
    ) -> Tensor:
        x = x + self.attn(self.attn_ln(x), causal=causal)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), kv=cross_kv)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Log-mel `(B, n_mels, T)` -> audio states `(B, ceil(T / 2), d)`; T <= 2 * n_ctx."""

    def __init__(self, n_mels: int, n_ctx: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, d))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(d, heads) for _ in range(layers))
        self.ln_post = nn.LayerNorm(d)

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        n_ctx = self.positional_embedding.shape[0]
        if x.shape[1] > n_ctx:
            raise ValueError(
                f"the log-mel has {mel.shape[-1]} frames; Whisper takes at most {2 * n_ctx} "
                "(30 s): cut the audio"
            )
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    """Tokens `(B, L)` and audio states `(B, S, d)` -> logits `(B, L, n_vocab)` (tied output)."""

    def __init__(self, n_vocab: int, n_ctx: int, d: int, heads: int, layers: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(n_vocab, d)
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, d))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(d, heads, cross_attention=True) for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def cross_kv(self, audio: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each block's cross-attention keys and values of `audio` (computed once per input)."""
        return [block.cross_attn.kv(audio) for block in self.blocks]

    def hidden(self, tokens: Tensor, cross_kv: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The final normalised states `(B, L, d)`: the input of the tied output projection."""
        if tokens.shape[1] > self.positional_embedding.shape[0]:
            raise ValueError(
                f"{tokens.shape[1]} tokens exceed the decoder's "
                f"{self.positional_embedding.shape[0]} positions"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block, kv in zip(self.blocks, cross_kv, strict=True):
            x = block(x, cross_kv=kv, causal=True)
        return self.ln(x)

    def forward(self, tokens: Tensor, audio: Tensor) -> Tensor:
        h = self.hidden(tokens, self.cross_kv(audio))
        return h @ self.token_embedding.weight.T


class Whisper(nn.Module):
    """Whisper: `model(mel, tokens)` -> logits `(B, L, n_vocab)` (teacher forcing).

    `input_frames`: the log-mel length its inputs are padded to (3,000 = Whisper's 30 s window);
    None: each batch only to its longest utterance (positions sliced).
    """

    def __init__(self, dims: WhisperDims | None = None) -> None:
        super().__init__()
        self.dims = dims or WhisperDims()
        d = self.dims
        self.input_frames: int | None = 2 * d.n_audio_ctx
        self.encoder = AudioEncoder(
            d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer
        )
        self.decoder = TextDecoder(
            d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer
        )

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        return self.decoder(tokens, self.encoder(mel))

"""BoW-guided transcript reconstruction by gradient matching (Dang et al. 2021, Section 4).

Setting: the attacker knows the attention decoder the server sent (its parameter names come from
`fedcore.DecoderParams`) and the gradient `g = -update / lr` of one SGD step on one utterance
(batch size 1, one local step). The utterance's target sequence `y_1..y_S` (word pieces + eos)
is reconstructed by simulating the teacher-forced speller with unknowns in place of what depends
on the audio, and matching the simulated gradient of the decoder-side parameters to `g`:

- A `(S, enc_dim)`: the attention contexts c_1..c_S (c_0 = 0 is known), so the input length and
  the encoder are not needed;
- P `(S, |BoW|)`: soft labels restricted to the bag of words (RLG's label set), a softmax over the
  BoW per row (or unconstrained with a row-sum penalty, weight lambda, as in the paper). Row t is
  the soft target of step t and, embedded (`P_t @ E_BoW`), the decoder input of step t + 1;
- D `(S, att_dim)`: the backward signal entering the attention at step t, `dL/d(W_s s_t + b_s)`.
  With free contexts the simulated graph lacks the path s_t -> attention -> c_t; D restores its
  contribution `W_s^T D_t` to `dL/ds_t` exactly, so the LSTM cell and embedding gradients match the
  real ones at the truth, and the attention query's gradient (`sum_t D_t s_t^T`, `sum_t D_t`) is
  matched too;
- the decoder's initial state: zero (as in LAS: known), or optimised (`init_state="optimise"`,
  for a speller whose initial state depends on the audio).

Matched gradients are named by role (`MATCHED`: a `DecoderParams` field, then the parameter),
each as a relative squared error `|G - G_obs|^2 / |G_obs|^2`, summed. The default `OUTPUT` (the
output projection) is exact at the truth with free contexts, needs no double backward and
converges best; `MATCHED` adds the LSTM cell, the embedding and the attention query (with D; a
double backward through the speller). The per-layer gradients are sums of outer products over the
steps (`sum_t a_t b_t^T`), so their distances come from S x S Gram matrices without forming
`(restarts, V, d)` tensors. Restarts run as one batch (`TranscriptOptions`); the transcript is the
argmax of P of the restart with the smallest distance.

Beyond the paper, `span_decode` reads the transcript exactly and in one pass from the row space
of the output layer's gradient (see its docstring); `init="span"` starts restart 0 from it, so
gradient matching only confirms it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from rapidfuzz.distance import Levenshtein
from torch import Tensor

from attacks.input_checks import check_decoder_grads
from fedcore import Finding, Score, resolve_device

if TYPE_CHECKING:
    from fedcore import DecoderParams, Truth

__all__ = [
    "MATCHED", "OUTPUT", "Transcript", "TranscriptOptions", "decoder_gradients", "parameter_names",
    "reconstruct_transcript", "span_decode",
]  # fmt: skip

# the decoder parameters whose gradients can be matched, by role: "<DecoderParams field>.<name>"
MATCHED = (
    "output.weight", "output.bias",
    "cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "cell.bias_hh",
    "embed", "attention_query.weight", "attention_query.bias",
)  # fmt: skip
OUTPUT = ("output.weight", "output.bias")  # the default: exact and cheapest (no double backward)
SPAN_LOGIT = 40.0  # logit of the span-decoded token (softmax P): one-hot to float32 precision
# the values TranscriptOptions' string fields accept
_CHOICES = {
    "labels": ("softmax", "penalty"),
    "init": ("random", "span"),
    "init_state": ("zero", "optimise"),
}


@dataclass(frozen=True, kw_only=True)
class TranscriptOptions:
    """How `reconstruct_transcript` searches (defaults: the paper's random restarts).

    Attributes:
        restarts: initialisations optimised together as one batch; the smallest distance wins.
        steps: the most Adam steps.
        lr: Adam's initial step size (in the variables' units: contexts, label logits).
        min_lr: the step size is never halved below this.
        halve_every: steps between halvings of the step size (0: never).
        patience: stop when no restart's argmax transcript changed for this many steps.
        tol: stop when the best distance (a sum of relative squared errors, unitless) is below
            it; also the threshold of `fallback`.
        labels: "softmax" (each row of P is a softmax over the BoW) or "penalty" (P free,
            `penalty * sum_t (sum_j P_tj - 1)^2` added, as in the paper).
        penalty: weight of the row-sum penalty (labels="penalty").
        fix_eos: the last target is eos (the training protocol): P's last row is fixed to it
            when eos is in the BoW.
        coverage: weight of `sum_j relu(1 - sum_t P_tj)^2`, every BoW token occurs at least
            once (applied when S >= |BoW|; 0 disables it).
        init_state: "zero" (the speller starts from a zero state and cell, as LAS: known) or
            "optimise" (free variables, for a speller initialised from the encoder).
        init_scale: standard deviation of the random initial contexts and states; the attention
            signals D start at 1% of it.
        seed: seed of the random initialisation (a CPU generator).
        device: "auto" (GPU when present), "cpu", "cuda", "cuda:<i>".
        dtype: the optimisation's float dtype.
        match: roles of the matched gradients, a non-empty subset of `MATCHED`.
        init: "random" (the paper: every restart random) or "span" (beyond the paper: restart 0
            starts from `span_decode`, the others random; random when that is impossible).
        fallback: beyond the paper: when the BoW run ends with a distance >= `tol` (RLG's BoW
            may miss a piece, as at a trained model), run again over the whole vocabulary and
            keep the smaller distance; `diagnostics["fallback"]` says which was kept.
    """

    restarts: int = 5
    steps: int = 3000
    lr: float = 0.05
    min_lr: float = 0.005
    halve_every: int = 1000
    patience: int = 500
    tol: float = 1e-6
    labels: str = "softmax"
    penalty: float = 1.0
    fix_eos: bool = True
    coverage: float = 1.0
    init_state: str = "zero"
    init_scale: float = 0.1
    seed: int = 0
    device: str | torch.device | None = "auto"
    dtype: torch.dtype = torch.float32
    match: Sequence[str] = OUTPUT
    init: str = "random"
    fallback: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "match", tuple(self.match))
        if self.restarts < 1 or self.steps < 0:
            raise ValueError(
                f"need restarts >= 1 and steps >= 0, got {self.restarts}, {self.steps}"
            )
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
        unknown = [n for n in self.match if n not in MATCHED]
        if unknown or not self.match:
            raise ValueError(f"match must be a non-empty subset of {MATCHED}, got {unknown}")


@dataclass(frozen=True, kw_only=True)
class Transcript(Finding):
    """A reconstructed transcript.

    Attributes:
        tokens: the S reconstructed target ids (argmax of P), eos included where predicted.
        text: the text of `tokens` (up to the first eos) when a tokenizer was given, else None.
        distance: the best restart's gradient distance (sum of relative squared errors).
        num_variables: optimised variables per restart.
        restarts: restarts run (as one batch); steps: optimisation steps taken.
        eos_id: the end token (pieces are the tokens before the first eos).
        tokenizer: optional object with `decode(ids) -> str`, used to score the text.
    """

    SCORES = (
        Score("exact"),
        Score("wer", headline=True, higher_is_better=False),
        Score("token_wer", higher_is_better=False),
        Score("length_error", "len_err", higher_is_better=False),
    )

    tokens: tuple[int, ...] = ()
    text: str | None = None
    distance: float = math.nan
    num_variables: int = 0
    restarts: int = 0
    steps: int = 0
    eos_id: int | None = 3
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def pieces(self) -> tuple[int, ...]:
        return _pieces(self.tokens, self.eos_id)

    def score(self, truth: Truth) -> dict[str, float]:
        """`exact` (piece sequence equal), `token_wer` (edit distance over pieces / #true
        pieces), `wer` (word error rate of the texts; the token WER without a tokenizer),
        `length_error` |S_hat - S| against the first utterance of the first step."""
        if not self.ok or truth.tokens is None:
            return {}
        target = tuple(int(t) for t in truth.tokens[0][0])
        ref, hyp = _pieces(target, self.eos_id), self.pieces
        scores = {
            "exact": float(ref == hyp),
            "token_wer": Levenshtein.distance(ref, hyp) / max(len(ref), 1),
            "length_error": float(abs(len(self.tokens) - len(target))),
        }
        scores["wer"] = scores["token_wer"]
        if self.tokenizer is not None:
            ref_text, hyp_text = self.tokenizer.decode(list(ref)), self.tokenizer.decode(list(hyp))
            ref_words = ref_text.split()
            scores["wer"] = Levenshtein.distance(ref_words, hyp_text.split()) / max(
                len(ref_words), 1
            )
            scores["text_exact"] = float(ref_text == hyp_text)
        return scores


def _pieces(tokens: Sequence[int], eos_id: int | None) -> tuple[int, ...]:
    tokens = tuple(int(t) for t in tokens)
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def parameter_names(decoder: DecoderParams) -> dict[str, str]:
    """Role (an entry of `MATCHED`) -> the model's parameter name."""

    def name(role: str) -> str:
        part, _, suffix = role.partition(".")
        return f"{getattr(decoder, part)}.{suffix}" if suffix else getattr(decoder, part)

    return {role: name(role) for role in MATCHED}


def decoder_gradients(
    update: Mapping[str, Tensor],
    lr: float,
    decoder: DecoderParams,
    match: Sequence[str] = MATCHED,
) -> dict[str, Tensor]:
    """The gradients `-update / lr` of the decoder parameters `match` (roles) in `update`, by
    parameter name."""
    if not lr > 0:
        raise ValueError(f"lr must be positive to turn an update into a gradient, got {lr}")
    names = parameter_names(decoder)
    return {names[r]: -update[names[r]].detach() / lr for r in match if names[r] in update}


# ---------------------------------------------------------------------------------------- math
def _outer_sq(a: Tensor, b: Tensor, obs: Tensor) -> Tensor:
    """`|sum_t a_t b_t^T - obs|^2` per restart without forming the sum.

    a `(R, S, m)`, b `(R, S, n)`, obs `(m, n)` -> `(R,)`."""
    gram = (a @ a.transpose(1, 2)) * (b @ b.transpose(1, 2))  # (R, S, S)
    cross = ((a @ obs) * b).sum((1, 2))
    return gram.sum((1, 2)) - 2 * cross + obs.pow(2).sum()


def _vec_sq(a: Tensor, obs: Tensor) -> Tensor:
    """`|sum_t a_t - obs|^2` per restart; a `(R, S, m)`, obs `(m,)`."""
    return (a.sum(1) - obs).pow(2).sum(1)


def _lstm_cell(gates: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
    """One `nn.LSTMCell` step from its gate pre-activations `(..., 4H)` (order i, f, g, o) and
    the previous cell: the new state and cell."""
    i, f, g, o = gates.chunk(4, -1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def _bag(bow: Sequence[int] | None, vocab: int) -> list[int]:
    """The sorted distinct token ids of `bow` (None: the whole vocabulary)."""
    bag = list(range(vocab)) if bow is None else sorted({int(t) for t in bow})
    if not bag or min(bag) < 0 or max(bag) >= vocab:
        raise ValueError(f"bow must be non-empty token ids in [0, {vocab}), got {bag[:10]}...")
    return bag


@dataclass(frozen=True)
class _Unrolled:
    """The simulated teacher-forced decoder of R restarts over S steps."""

    p_in: Tensor  # (R, S, B') input weights over the embedding rows the decoder reads
    x: Tensor  # (R, S, E + C) cell inputs [embedding; previous context]
    gates: list[Tensor]  # S x (R, 4H) gate pre-activations
    s_prev: list[Tensor]  # S x (R, H) state entering each step
    states: Tensor  # (R, S, H) states after each step


class _Problem:
    """The fixed part of one reconstruction: decoder weights and observed gradients (by role),
    the BoW, shapes."""

    def __init__(
        self,
        model: torch.nn.Module,
        grads: Mapping[str, Tensor],
        decoder: DecoderParams,
        bow: Sequence[int] | None,
        length: int,
        *,
        match: Sequence[str] = MATCHED,
        label_smoothing: float = 0.0,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.names, self.match = parameter_names(decoder), tuple(match)
        params = dict(model.named_parameters())
        self.w = {r: params[n].detach().to(device, dtype) for r, n in self.names.items()}
        self.V, self.E = self.w["embed"].shape
        bag = _bag(bow, self.V)
        missing = [self.names[r] for r in self.match if self.names[r] not in grads]
        if missing:
            wanted = [self.names[r] for r in self.match]
            raise ValueError(f"decoder_grads lacks {missing}; pass the gradients of {wanted}")
        self.backprop = any(r not in OUTPUT for r in self.match)  # needs the cell's backward
        self.obs = {r: grads[self.names[r]].detach().to(device, dtype) for r in self.match}
        self.norms = {r: self.obs[r].pow(2).sum().clamp_min(1e-30) for r in self.match}
        self.bos, self.eos = int(model.bos_id), int(model.eos_id)
        self.H = self.w["cell.weight_hh"].shape[1]
        self.C = self.w["output.weight"].shape[1] - self.H  # context size
        self.att = self.w["attention_query.weight"].shape[0]
        self.S = int(length)
        self.bow = torch.as_tensor(bag, dtype=torch.long, device=device)
        # embedding rows the simulated decoder reads: bos (first input) and the BoW
        self.rows = torch.unique(torch.cat([self.bow, self.bow.new_tensor([self.bos])]))
        self.bos_row = int((self.rows == self.bos).nonzero()[0, 0])
        self.bow_in_rows = torch.searchsorted(self.rows, self.bow)
        if "embed" in self.match:
            e_obs = self.obs["embed"]
            self.e_obs_rows = e_obs[self.rows]
            self.e_obs_rest = e_obs.pow(2).sum() - self.e_obs_rows.pow(2).sum()
        self.smoothing = float(label_smoothing)
        zero = torch.zeros(self.H, device=device, dtype=dtype)
        self.init_state = (zero, zero)  # the initial state and cell when they are known (zero)

    def unroll(self, ctx: Tensor, probs: Tensor, s0: Tensor, c0: Tensor) -> _Unrolled:
        """The decoder fed bos, then the soft labels `probs` `(R, S, B)` embedded, with the
        contexts `ctx` `(R, S, C)` and the initial state and cell `(R, H)`."""
        w, R, S = self.w, ctx.shape[0], self.S
        p_in = ctx.new_zeros(R, S, len(self.rows))
        p_in[:, 0, self.bos_row] = 1.0
        if S > 1:
            p_in[:, 1:, self.bow_in_rows] = probs[:, :-1]
        emb = p_in @ w["embed"][self.rows]  # (R, S, E)
        ctx_prev = torch.cat([ctx.new_zeros(R, 1, self.C), ctx[:, :-1]], 1)
        x = torch.cat([emb, ctx_prev], -1)
        x_proj = x @ w["cell.weight_ih"].T + (w["cell.bias_ih"] + w["cell.bias_hh"])
        s, cell, gates, s_prev, states = s0, c0, [], [], []
        for t in range(S):
            s_prev.append(s)
            gates.append(x_proj[:, t] + s @ w["cell.weight_hh"].T)
            s, cell = _lstm_cell(gates[-1], cell)
            states.append(s)
        return _Unrolled(p_in, x, gates, s_prev, torch.stack(states, 1))

    def parts(
        self, ctx: Tensor, probs: Tensor, att_delta: Tensor, s0: Tensor, c0: Tensor
    ) -> dict[str, Tensor]:
        """Per-restart relative squared error `(R,)` of each matched gradient, by role.

        ctx `(R, S, C)` contexts; probs `(R, S, B)` soft labels over the BoW (rows need not sum
        to one); att_delta `(R, S, att)`; s0, c0 `(R, H)` initial decoder state."""
        w, o, S = self.w, self.obs, self.S
        u = self.unroll(ctx, probs, s0, c0)
        feat = torch.cat([u.states, ctx], -1)  # (R, S, H + C)
        logits = feat @ w["output.weight"].T + w["output.bias"]  # (R, S, V)
        target = ctx.new_zeros(*logits.shape)  # (R, S, V)
        target[:, :, self.bow] = probs
        if self.smoothing:
            mass = target.sum(-1, keepdim=True)
            target = (1 - self.smoothing) * target + self.smoothing * mass / self.V
        logp = torch.log_softmax(logits, -1)
        d_logits = (logp.exp() * target.sum(-1, keepdim=True) - target) / S  # (R, S, V)
        terms: dict[str, Callable[[], Tensor]] = {
            "output.weight": lambda: _outer_sq(d_logits, feat, o["output.weight"]),
            "output.bias": lambda: _vec_sq(d_logits, o["output.bias"]),
        }
        if self.backprop:
            terms |= self._backprop_terms(u, att_delta, -(target * logp).sum() / S)
        return {k: terms[k]() / self.norms[k] for k in self.match}

    def _backprop_terms(
        self, u: _Unrolled, att_delta: Tensor, loss: Tensor
    ) -> dict[str, Callable[[], Tensor]]:
        """The squared errors of the cell, embedding and attention-query gradients, from the
        gates' backward signals of `loss` (summed over restarts) with the attention path."""
        o, w_ih = self.obs, self.w["cell.weight_ih"]
        # the attention path: dL/ds_t += W_s^T D_t (D is a free variable)
        loss = loss + (att_delta * (u.states @ self.w["attention_query.weight"].T)).sum()
        dg = torch.stack(torch.autograd.grad(loss, u.gates, create_graph=True), 1)  # (R, S, 4H)
        s_prev = torch.stack(u.s_prev, 1)
        g_emb_rows = u.p_in.transpose(1, 2) @ (dg @ w_ih[:, : self.E])  # (R, B', E)
        return {
            "cell.weight_ih": lambda: _outer_sq(dg, u.x, o["cell.weight_ih"]),
            "cell.weight_hh": lambda: _outer_sq(dg, s_prev, o["cell.weight_hh"]),
            "cell.bias_ih": lambda: _vec_sq(dg, o["cell.bias_ih"]),
            "cell.bias_hh": lambda: _vec_sq(dg, o["cell.bias_hh"]),
            "embed": lambda: (g_emb_rows - self.e_obs_rows).pow(2).sum((1, 2)) + self.e_obs_rest,
            "attention_query.weight": lambda: _outer_sq(
                att_delta, u.states, o["attention_query.weight"]
            ),
            "attention_query.bias": lambda: _vec_sq(att_delta, o["attention_query.bias"]),
        }

    def distance(
        self, ctx: Tensor, probs: Tensor, att_delta: Tensor, s0: Tensor, c0: Tensor
    ) -> Tensor:
        """Per-restart gradient distance `(R,)`: the sum of `parts`."""
        return sum(self.parts(ctx, probs, att_delta, s0, c0).values())


@torch.no_grad()
def span_decode(
    model: torch.nn.Module,
    decoder_grads: Mapping[str, Tensor],
    bow: Sequence[int] | None,
    length: int,
    decoder: DecoderParams,
    *,
    fix_eos: bool = True,
    device: str | torch.device | None = "auto",
) -> tuple[list[int], Tensor, list[float]]:
    """Exact sequential decoding from the row space of the output layer's gradient (beyond the
    paper; used as `init="span"`).

    The output projection's gradient is `sum_t g_t h_t^T / S` with `h_t = [s_t; c_t]`, so (for
    S linearly independent `g_t`, S <= d) its row space is span{h_t}, a basis Q `(d, S)` from the
    SVD. The initial state is zero, so s_1 (input bos, c_0 = 0) is known;
    c_t is then the context part of the point of span{h} whose state part is s_t (least squares
    on Q's state rows, H > S). Token y_{t-1} is the BoW candidate whose next state s_t lies in the
    span (smallest relative residual). The last token is eos when `fix_eos` and eos is in the BoW,
    else the most negative entry of its recovered `g_S` over the BoW.

    Returns the S token ids, the contexts `(S, C)` and the relative residuals per step.
    Raises ValueError when S exceeds the decoder's state size (the state no longer pins the
    context).
    """
    dev = resolve_device(device)
    prob = _Problem(model, decoder_grads, decoder, bow, length, match=OUTPUT, device=dev,
                    dtype=torch.float64)  # fmt: skip
    w, S, H = prob.w, prob.S, prob.H
    if H < S:
        raise ValueError(f"span decoding needs length S={S} <= decoder state size {H}")
    _, _, vh = torch.linalg.svd(prob.obs["output.weight"], full_matrices=False)
    q = vh[:S].T  # (d, S)
    q_s, q_c = q[:H], q[H:]
    pinv = torch.linalg.pinv(q_s)  # (S, H)
    w_ih, w_hh = w["cell.weight_ih"], w["cell.weight_hh"]
    bias = w["cell.bias_ih"] + w["cell.bias_hh"]

    def step(emb: Tensor, ctx: Tensor, s: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        gates = torch.cat([emb, ctx.expand(len(emb), -1)], -1) @ w_ih.T + s @ w_hh.T + bias
        return _lstm_cell(gates, cell)

    def project(s: Tensor) -> tuple[Tensor, Tensor]:
        a = s @ pinv.T  # (n, S)
        resid = (a @ q_s.T - s).norm(dim=-1) / s.norm(dim=-1).clamp_min(1e-30)
        return a @ q_c.T, resid

    s0, c0 = (v[None] for v in prob.init_state)
    s, cell = step(w["embed"][[prob.bos]], s0.new_zeros(1, prob.C), s0, c0)
    ctx, r = project(s)
    tokens, contexts, resids, feats = [], [ctx[0]], [float(r[0])], [torch.cat([s[0], ctx[0]])]
    cand, n = prob.bow, len(prob.bow)
    for _ in range(1, S):
        s_c, cell_c = step(w["embed"][cand], ctx, s.expand(n, -1), cell.expand(n, -1))
        ctx_c, r = project(s_c)
        j = int(r.argmin())
        tokens.append(int(cand[j]))
        s, cell, ctx = s_c[j : j + 1], cell_c[j : j + 1], ctx_c[j : j + 1]
        contexts.append(ctx[0])
        resids.append(float(r[j]))
        feats.append(torch.cat([s[0], ctx[0]]))
    if fix_eos and bool((cand == prob.eos).any()):
        tokens.append(prob.eos)
    else:  # g_S from G_W = G^T Hm: the last column of G_W Hm^+
        g_last = prob.obs["output.weight"] @ torch.linalg.pinv(torch.stack(feats))[:, -1]
        tokens.append(int(cand[int(g_last[cand].argmin())]))
    return tokens, torch.stack(contexts), resids


# -------------------------------------------------------------------------------- the search
_SpanDecode = Callable[[], tuple[list[int], Tensor, list[float]]]  # `span_decode` of the problem


@dataclass(frozen=True)
class _Variables:
    """The variables of one run (restarts as a batch) and where restart 0 began."""

    ctx: Tensor  # (R, S, C) contexts
    p_raw: Tensor  # (R, S, B) label logits (softmax) or soft labels (penalty)
    delta: Tensor  # (R, S, att) attention signals D
    s0: Tensor  # (R, H) initial state
    c0: Tensor  # (R, H) initial cell
    free: list[Tensor]  # what Adam optimises
    softmax: bool  # P is a softmax of p_raw (else p_raw itself)
    eos_row: Tensor | None  # (B,) P's fixed last row (one-hot eos), None when not fixed
    init: str = "random"  # "random", "span" or "random (<why span decoding failed>)"

    @property
    def num_variables(self) -> int:
        fixed = len(self.eos_row) if self.eos_row is not None else 0
        return sum(v[0].numel() for v in self.free) - fixed

    def labels(self) -> Tensor:
        """P `(R, S, B)`."""
        p = torch.softmax(self.p_raw, -1) if self.softmax else self.p_raw
        if self.eos_row is not None:
            p = torch.cat([p[:, :-1], self.eos_row.expand(len(p), 1, -1)], 1)
        return p


def _start(prob: _Problem, opts: TranscriptOptions, span: _SpanDecode) -> _Variables:
    """The initial variables: random (seeded), restart 0 from `span()` when `init="span"`."""
    gen = torch.Generator(device="cpu").manual_seed(opts.seed)
    R, S, B, dev = opts.restarts, prob.S, len(prob.bow), prob.bow.device

    def rand(*shape: int, scale: float = 1.0, offset: float = 0.0) -> Tensor:
        t = torch.randn(*shape, generator=gen, dtype=opts.dtype) * scale
        return (t + offset if offset else t).to(dev).requires_grad_(True)

    softmax = opts.labels == "softmax"
    ctx = rand(R, S, prob.C, scale=opts.init_scale)
    p_raw = rand(R, S, B) if softmax else rand(R, S, B, scale=0.01, offset=1.0 / B)
    delta = rand(R, S, prob.att, scale=opts.init_scale * 0.01)
    free = [ctx, p_raw, delta] if prob.backprop else [ctx, p_raw]
    if opts.init_state == "zero":
        s0, c0 = (v.expand(R, -1) for v in prob.init_state)
    else:
        s0, c0 = rand(R, prob.H, scale=opts.init_scale), rand(R, prob.H, scale=opts.init_scale)
        free += [s0, c0]
    eos_row, eos_idx = None, (prob.bow == prob.eos).nonzero()
    if opts.fix_eos and len(eos_idx):
        eos_row = torch.zeros(B, dtype=opts.dtype, device=dev)
        eos_row[eos_idx[0, 0]] = 1.0
    var = _Variables(ctx, p_raw, delta, s0, c0, free, softmax, eos_row)
    if opts.init == "span" and opts.init_state == "zero":
        var = replace(var, init=_from_span(var, prob, span))
    return var


def _from_span(var: _Variables, prob: _Problem, span: _SpanDecode) -> str:
    """Set restart 0 to `span()`'s tokens and contexts; returns where it began."""
    try:
        tokens, contexts, _ = span()
    except ValueError as err:  # e.g. S > the decoder's state size
        return f"random ({err})"
    with torch.no_grad():
        var.ctx[0] = contexts.to(var.ctx.dtype)
        hot = torch.searchsorted(prob.bow, torch.tensor(tokens, device=prob.bow.device))
        onehot = torch.nn.functional.one_hot(hot, len(prob.bow)).to(var.ctx.dtype)
        var.p_raw[0] = SPAN_LOGIT * onehot if var.softmax else onehot
    return "span"


@dataclass(frozen=True)
class _Search:
    """What `_optimise` found: the best restart's distance and BoW indices, how it stopped."""

    distance: float
    indices: list[int]  # per step, an index into the BoW
    restart: int
    steps: int
    stop: str  # "converged", "unchanged" or "steps"
    final: list[float]  # every restart's distance at the last step
    parts: dict[str, float]  # the best restart's parts at the last step, by parameter name


def _optimise(prob: _Problem, var: _Variables, opts: TranscriptOptions) -> _Search:
    """Adam on every restart at once until the best distance is below `tol`, no argmax
    transcript changed for `patience` steps, or `steps` ran out."""
    opt = torch.optim.Adam(var.free, lr=opts.lr)
    best = (math.inf, None, -1)  # distance, BoW indices, restart
    last_argmax, unchanged, stop, step = None, 0, "steps", 0
    for step in range(opts.steps + 1):
        p = var.labels()
        parts = prob.parts(var.ctx, p, var.delta, var.s0, var.c0)
        dist = sum(parts.values())
        argmax = p.detach().argmax(-1)
        with torch.no_grad():
            i = int(dist.argmin())
            if float(dist[i]) < best[0]:
                best = (float(dist[i]), argmax[i].clone(), i)
        if best[0] < opts.tol:
            stop = "converged"
            break
        if last_argmax is not None and torch.equal(argmax, last_argmax):
            unchanged += 1
            if unchanged >= opts.patience:
                stop = "unchanged"
                break
        else:
            unchanged = 0
        last_argmax = argmax
        if step == opts.steps:
            break
        opt.zero_grad(set_to_none=True)
        _loss(dist, p, opts).backward()
        opt.step()
        if opts.halve_every and (step + 1) % opts.halve_every == 0:
            for group in opt.param_groups:
                group["lr"] = max(group["lr"] / 2, opts.min_lr)
    distance, indices, restart = best
    return _Search(
        distance=distance,
        indices=indices.cpu().tolist(),
        restart=restart,
        steps=step,
        stop=stop,
        final=dist.detach().cpu().tolist(),
        parts={prob.names[k]: float(v.detach()[restart]) for k, v in parts.items()},
    )


def _loss(dist: Tensor, p: Tensor, opts: TranscriptOptions) -> Tensor:
    """The distances of all restarts plus the label penalties."""
    loss = dist.sum()
    if opts.labels == "penalty":
        loss = loss + opts.penalty * (p.sum(-1) - 1).pow(2).sum()
    if opts.coverage and p.shape[1] >= p.shape[2]:  # S >= |BoW|: every token occurs once
        loss = loss + opts.coverage * torch.relu(1 - p.sum(1)).pow(2).sum()
    return loss


def _run(
    model: torch.nn.Module,
    grads: Mapping[str, Tensor],
    bow: Sequence[int] | None,
    length: int,
    decoder: DecoderParams,
    opts: TranscriptOptions,
    label_smoothing: float,
    tokenizer: Any,
) -> Transcript:
    """One gradient-matching run over `bow` (None: the whole vocabulary)."""
    start, dev = time.perf_counter(), resolve_device(opts.device)
    with torch.enable_grad():
        prob = _Problem(model, grads, decoder, bow, length, match=opts.match,
                        label_smoothing=label_smoothing, device=dev, dtype=opts.dtype)  # fmt: skip
        bag = prob.bow.tolist()

        def span() -> tuple[list[int], Tensor, list[float]]:
            return span_decode(model, grads, bag, length, decoder, fix_eos=opts.fix_eos, device=dev)

        var = _start(prob, opts, span)
        found = _optimise(prob, var, opts)
    tokens = tuple(bag[j] for j in found.indices)
    return Transcript(
        tokens=tokens,
        text=tokenizer.decode(list(tokens)) if tokenizer is not None else None,
        distance=found.distance,
        num_variables=var.num_variables,
        restarts=opts.restarts,
        steps=found.steps,
        eos_id=prob.eos,
        tokenizer=tokenizer,
        diagnostics={
            "seconds": time.perf_counter() - start,
            "distance": found.distance,
            "final_distances": found.final,
            "best_restart": found.restart,
            "steps": found.steps,
            "stop": found.stop,
            "init_state": opts.init_state,
            "init": var.init,
            "num_variables": var.num_variables,
            "bow_size": len(bag),
            "length": prob.S,
            "device": str(dev),
            "parts": found.parts,
        },
    )


def reconstruct_transcript(
    model: torch.nn.Module,
    decoder_grads: Mapping[str, Tensor],
    bow: Sequence[int] | None,
    length: int,
    decoder: DecoderParams,
    options: TranscriptOptions | None = None,
    *,
    label_smoothing: float = 0.0,
    tokenizer: Any = None,
) -> Transcript:
    """Reconstruct the S target tokens of one utterance from the gradient of one step.

    Args:
        model: the speech model whose gradient was observed (the global model; not modified),
            with `bos_id` and `eos_id` attributes.
        decoder_grads: parameter name -> gradient `-update / lr` (the loss's gradient, same
            shapes as the parameters) for every role in `options.match` (`decoder_gradients`).
        bow: the bag of words (token ids that occur among the targets, e.g. RLG's labels, eos
            included); None = the baseline without BoW (labels over the whole vocabulary).
        length: S, the number of target tokens (pieces + eos), e.g. RLG's `num_labels`.
        decoder: the names of the decoder step's parameters (`SpeechSpec.decoder`).
        options: how to search (`TranscriptOptions`; None: its defaults).
        label_smoothing: the clients' label smoothing (targets `(1-eps) P + eps / V`).
        tokenizer: optional, with `decode(ids) -> str`, for the text and text scores.

    Returns: a `Transcript` (tokens, text, distance, #variables, restarts, steps; diagnostics with
    seconds, per-restart distances, the initial-state source and the stop reason).
    """
    start, opts = time.perf_counter(), options or TranscriptOptions()
    if length < 1:
        raise ValueError(f"length must be >= 1 target token, got {length}")
    params, names = dict(model.named_parameters()), parameter_names(decoder).values()
    check_decoder_grads(decoder_grads, params, [n for n in names if n in params], opts.dtype)
    found = _run(model, decoder_grads, bow, length, decoder, opts, label_smoothing, tokenizer)
    if not (opts.fallback and bow is not None and found.distance >= opts.tol):
        return found
    wide = _run(model, decoder_grads, None, length, decoder, opts, label_smoothing, tokenizer)
    kept = wide if wide.distance < found.distance else found
    fallback = {"bow_distance": found.distance, "vocab_distance": wide.distance,
                "kept": "vocab" if kept is wide else "bow"}  # fmt: skip
    diagnostics = {**kept.diagnostics, "fallback": fallback, "seconds": time.perf_counter() - start}
    return replace(kept, diagnostics=diagnostics)

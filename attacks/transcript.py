"""BoW-guided transcript reconstruction by gradient matching (Dang et al. 2021, Section 4).

Setting: the attacker knows the LAS model (`fedsim.asr.model.LAS`) the server sent and the gradient
`g = -update / lr` of one SGD step on one utterance (batch size 1, one local step). The utterance's
target sequence `y_1..y_S` (word pieces + eos) is reconstructed by simulating the teacher-forced
speller with unknowns in place of what depends on the audio, and matching the simulated gradient
of the decoder-side parameters to `g`:

- A `(S, enc_dim)`: the attention contexts c_1..c_S (c_0 = 0 is known), so the input length and
  the encoder are not needed;
- P `(S, |BoW|)`: soft labels restricted to the bag of words (RLG's label set), a softmax over the
  BoW per row (or unconstrained with a row-sum penalty, weight lambda, as in the paper). Row t is
  the soft target of step t and, embedded (`P_t @ E_BoW`), the decoder input of step t + 1;
- D `(S, att_dim)`: the backward signal entering the attention at step t, `dL/d(W_s s_t + b_s)`.
  With free contexts the simulated graph lacks the path s_t -> attention -> c_t; D restores its
  contribution `W_s^T D_t` to `dL/ds_t` exactly, so the LSTM cell and embedding gradients match the
  real ones at the truth, and `att_s`'s gradient (`sum_t D_t s_t^T`, `sum_t D_t`) is matched too;
- the decoder's initial state: zero in `LAS` (known; the attacker needs nothing), or optimised
  (`init_state="optimise"`, for a speller whose initial state depends on the audio).

Matched gradients (each as a relative squared error `|G - G_obs|^2 / |G_obs|^2`, summed): by
default `output.{weight,bias}` only (`OUTPUT`): exact at the truth with free contexts, no double
backward, and it converged where the full set did not (tiny LAS, S = 6: output only reached
4e-5 with the exact transcript; all of `MATCHED` stalled near 8). `match=MATCHED` adds
`decoder.{weight_ih,weight_hh,bias_ih,bias_hh}`, `embed.weight` and `att_s.{weight,bias}`
(with D; a double backward through the speller). The per-layer gradients are sums of outer
products over the steps (`sum_t a_t b_t^T`), so their distances come from S x S Gram matrices
without forming `(restarts, V, d)` tensors. Restarts run as one batch; Adam with lr halved every
`halve_every` steps down to `min_lr`; stop when the best restart's distance is numerically zero
(`tol`), or when no restart's argmax transcript changed for `patience` steps. The transcript is
the argmax of P of the restart with the smallest distance.

Beyond the paper, `span_decode` reads the transcript exactly and in one pass from the row space
of the output layer's gradient (see its docstring); `init="span"` starts restart 0 from it, so
gradient matching only confirms it (distance ~1e-7 at step 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedcore import Finding, Score

if TYPE_CHECKING:
    from fedcore import Truth

__all__ = [
    "MATCHED", "OUTPUT", "Transcript", "decoder_gradients", "reconstruct_transcript", "span_decode",
]  # fmt: skip

# parameters whose gradients are matched (LAS module names)
MATCHED = (
    "output.weight", "output.bias",
    "decoder.weight_ih", "decoder.weight_hh", "decoder.bias_ih", "decoder.bias_hh",
    "embed.weight", "att_s.weight", "att_s.bias",
)  # fmt: skip
OUTPUT = ("output.weight", "output.bias")  # the default: exact and cheapest (no double backward)
SPAN_LOGIT = 40.0  # logit of the span-decoded token (softmax P): one-hot to float32 precision


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
            "token_wer": _edit(ref, hyp) / max(len(ref), 1),
            "length_error": float(abs(len(self.tokens) - len(target))),
        }
        scores["wer"] = scores["token_wer"]
        if self.tokenizer is not None:
            ref_text, hyp_text = self.tokenizer.decode(list(ref)), self.tokenizer.decode(list(hyp))
            scores["wer"] = _edit(ref_text.split(), hyp_text.split()) / max(
                len(ref_text.split()), 1
            )
            scores["text_exact"] = float(ref_text == hyp_text)
        return scores


def _pieces(tokens: Sequence[int], eos_id: int | None) -> tuple[int, ...]:
    tokens = tuple(int(t) for t in tokens)
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


def _edit(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two sequences."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def decoder_gradients(
    update: Mapping[str, Tensor], lr: float, names: Sequence[str] = MATCHED
) -> dict[str, Tensor]:
    """The gradients `-update / lr` of the parameters `names` present in `update`."""
    if not lr > 0:
        raise ValueError(f"lr must be positive to turn an update into a gradient, got {lr}")
    return {n: -update[n].detach() / lr for n in names if n in update}


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


class _Problem:
    """The fixed part of one reconstruction: weights, observed gradients, BoW, shapes."""

    def __init__(
        self, model, grads, bow, length, label_smoothing, device, dtype, match=MATCHED
    ) -> None:
        self.match = tuple(match)
        self.backprop = False
        unknown = [n for n in match if n not in MATCHED]
        if unknown or not match:
            raise ValueError(f"match must be a non-empty subset of {MATCHED}, got {unknown}")
        missing = [n for n in match if n not in grads]
        if missing:
            raise ValueError(f"decoder_grads lacks {missing}; pass the gradients of {match}")
        self.backprop = any(n not in OUTPUT for n in match)  # needs the LSTM's backward signals
        w = {n: p.detach().to(device, dtype) for n, p in model.named_parameters()}
        self.w = w
        self.obs = {n: grads[n].detach().to(device, dtype) for n in match}
        self.bos, self.eos = int(model.bos_id), int(model.eos_id)
        self.V, self.E = w["embed.weight"].shape
        self.H = w["decoder.weight_hh"].shape[1]
        self.C = w["output.weight"].shape[1] - self.H  # context size
        self.att = w["att_s.weight"].shape[0]
        self.S = int(length)
        self.bow = torch.as_tensor(sorted({int(t) for t in bow}), dtype=torch.long, device=device)
        # embedding rows the simulated decoder reads: bos (first input) and the BoW
        self.rows = torch.unique(torch.cat([self.bow, self.bow.new_tensor([self.bos])]))
        self.bos_row = int((self.rows == self.bos).nonzero()[0, 0])
        self.bow_in_rows = torch.searchsorted(self.rows, self.bow)
        if "embed.weight" in match:
            e_obs = self.obs["embed.weight"]
            self.e_obs_rows = e_obs[self.rows]
            self.e_obs_rest = e_obs.pow(2).sum() - self.e_obs_rows.pow(2).sum()
        self.norms = {n: self.obs[n].pow(2).sum().clamp_min(1e-30) for n in match}
        self.smoothing = float(label_smoothing)
        zero = torch.zeros(self.H, device=device, dtype=dtype)
        self.init_state = (zero, zero)  # the LAS speller starts from a zero state and cell

    def distance(
        self, ctx: Tensor, probs: Tensor, att_delta: Tensor, s0: Tensor, c0: Tensor
    ) -> Tensor:
        """Per-restart gradient distance `(R,)`.

        ctx `(R, S, C)` contexts; probs `(R, S, B)` soft labels over the BoW (rows need not sum
        to one); att_delta `(R, S, att)`; s0, c0 `(R, H)` initial decoder state."""
        w, R, S = self.w, ctx.shape[0], self.S
        emb_rows = w["embed.weight"][self.rows]  # (B', E)
        # decoder input weights over embedding rows: bos first, then the soft labels
        p_in = ctx.new_zeros(R, S, len(self.rows))
        p_in[:, 0, self.bos_row] = 1.0
        if S > 1:
            p_in[:, 1:, self.bow_in_rows] = probs[:, :-1]
        emb = p_in @ emb_rows  # (R, S, E)
        ctx_prev = torch.cat([ctx.new_zeros(R, 1, self.C), ctx[:, :-1]], 1)
        x = torch.cat([emb, ctx_prev], -1)  # (R, S, E + C)
        w_ih, w_hh = w["decoder.weight_ih"], w["decoder.weight_hh"]
        bias = w["decoder.bias_ih"] + w["decoder.bias_hh"]
        x_proj = x @ w_ih.T + bias
        s, cell = s0, c0
        gates, s_prev, states = [], [], []
        for t in range(S):
            g = x_proj[:, t] + s @ w_hh.T
            gates.append(g)
            s_prev.append(s)
            i, f, gg, o = g.chunk(4, -1)
            cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(gg)
            s = torch.sigmoid(o) * torch.tanh(cell)
            states.append(s)
        s_all = torch.stack(states, 1)  # (R, S, H)
        feat = torch.cat([s_all, ctx], -1)  # (R, S, H + C)
        logits = feat @ w["output.weight"].T + w["output.bias"]  # (R, S, V)
        target = ctx.new_zeros(R, S, self.V)
        target[:, :, self.bow] = probs
        if self.smoothing:
            mass = target.sum(-1, keepdim=True)
            target = (1 - self.smoothing) * target + self.smoothing * mass / self.V
        logp = torch.log_softmax(logits, -1)
        loss = -(target * logp).sum() / S  # the sum over restarts; each part is one restart's
        d_logits = (logp.exp() * target.sum(-1, keepdim=True) - target) / S  # (R, S, V)
        if self.backprop:
            # attention path: dL/ds_t += W_s^T D_t (D is a free variable)
            loss = loss + (att_delta * (s_all @ w["att_s.weight"].T)).sum()
            d_gates = torch.autograd.grad(loss, gates, create_graph=True)
            dg = torch.stack(d_gates, 1)  # (R, S, 4H)
            s_prev_all = torch.stack(s_prev, 1)
            d_emb = dg @ w_ih[:, : self.E]  # (R, S, E)
            g_emb_rows = p_in.transpose(1, 2) @ d_emb  # (R, B', E)
        o, n = self.obs, self.norms
        terms = {
            "output.weight": lambda: _outer_sq(d_logits, feat, o["output.weight"]),
            "output.bias": lambda: _vec_sq(d_logits, o["output.bias"]),
            "decoder.weight_ih": lambda: _outer_sq(dg, x, o["decoder.weight_ih"]),
            "decoder.weight_hh": lambda: _outer_sq(dg, s_prev_all, o["decoder.weight_hh"]),
            "decoder.bias_ih": lambda: _vec_sq(dg, o["decoder.bias_ih"]),
            "decoder.bias_hh": lambda: _vec_sq(dg, o["decoder.bias_hh"]),
            "embed.weight": lambda: (
                (g_emb_rows - self.e_obs_rows).pow(2).sum((1, 2)) + self.e_obs_rest
            ),
            "att_s.weight": lambda: _outer_sq(att_delta, s_all, o["att_s.weight"]),
            "att_s.bias": lambda: _vec_sq(att_delta, o["att_s.bias"]),
        }
        parts = {k: terms[k]() / n[k] for k in self.match}
        self.last_parts = {k: v.detach() for k, v in parts.items()}
        dist = sum(parts.values())
        return dist


@torch.no_grad()
def span_decode(
    model: torch.nn.Module,
    decoder_grads: Mapping[str, Tensor],
    bow: Sequence[int] | None,
    length: int,
    *,
    fix_eos: bool = True,
    device: str | torch.device | None = "auto",
) -> tuple[list[int], Tensor, list[float]]:
    """Exact sequential decoding from the row space of the output layer's gradient (beyond the
    paper; used as `init="span"`).

    `output.weight`'s gradient is `sum_t g_t h_t^T / S` with `h_t = [s_t; c_t]`, so (for S
    linearly independent `g_t`, S <= d) its row space is span{h_t}, a basis Q `(d, S)` from the
    SVD. The initial state is zero, so s_1 (input bos, c_0 = 0) is known;
    c_t is then the context part of the point of span{h} whose state part is s_t (least squares
    on Q's state rows, H > S). Token y_{t-1} is the BoW candidate whose next state s_t lies in the
    span (smallest relative residual). The last token is eos when `fix_eos` and eos is in the BoW,
    else the most negative entry of its recovered `g_S` over the BoW.

    Returns the S token ids, the contexts `(S, C)` and the relative residuals per step.
    Raises ValueError when S exceeds dec_hidden (the state part no longer pins the context).
    """
    dev = _device(device)
    vocab = model.embed.weight.shape[0]
    bow = list(range(vocab)) if bow is None else sorted({int(t) for t in bow})
    prob = _Problem(model, decoder_grads, bow, length, 0.0, dev, torch.float64, OUTPUT)
    w, S, H = prob.w, prob.S, prob.H
    if H < S:
        raise ValueError(f"span decoding needs length S={S} <= dec_hidden {H}")
    _, _, vh = torch.linalg.svd(prob.obs["output.weight"], full_matrices=False)
    q = vh[:S].T  # (d, S)
    q_s, q_c = q[:H], q[H:]
    pinv = torch.linalg.pinv(q_s)  # (S, H)
    emb_w, w_ih, w_hh = w["embed.weight"], w["decoder.weight_ih"], w["decoder.weight_hh"]
    bias = w["decoder.bias_ih"] + w["decoder.bias_hh"]

    def step(emb: Tensor, ctx: Tensor, s: Tensor, cell: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.cat([emb, ctx.expand(len(emb), -1)], -1) @ w_ih.T + s @ w_hh.T + bias
        i, f, gg, o = g.chunk(4, -1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(gg)
        return torch.sigmoid(o) * torch.tanh(cell), cell

    def project(s: Tensor) -> tuple[Tensor, Tensor]:
        a = s @ pinv.T  # (n, S)
        resid = (a @ q_s.T - s).norm(dim=-1) / s.norm(dim=-1).clamp_min(1e-30)
        return a @ q_c.T, resid

    s0, c0 = (v[None] for v in prob.init_state)
    s, cell = step(emb_w[[prob.bos]], torch.zeros(1, prob.C, dtype=s0.dtype, device=dev), s0, c0)
    ctx, r = project(s)
    tokens, contexts, resids, feats = [], [ctx[0]], [float(r[0])], [torch.cat([s[0], ctx[0]])]
    cand = prob.bow
    for _ in range(1, S):
        s_c, cell_c = step(emb_w[cand], ctx, s.expand(len(cand), -1), cell.expand(len(cand), -1))
        ctx_c, r = project(s_c)
        j = int(r.argmin())
        tokens.append(int(cand[j]))
        s, cell, ctx = s_c[j : j + 1], cell_c[j : j + 1], ctx_c[j : j + 1]
        contexts.append(ctx[0])
        resids.append(float(r[j]))
        feats.append(torch.cat([s[0], ctx[0]]))
    if fix_eos and prob.eos in bow:
        tokens.append(prob.eos)
    else:  # g_S from G_W = G^T Hm: the last column of G_W Hm^+
        hm = torch.stack(feats)  # (S, d)
        g_last = prob.obs["output.weight"] @ torch.linalg.pinv(hm)[:, -1]
        tokens.append(int(cand[int(g_last[cand].argmin())]))
    return tokens, torch.stack(contexts), resids


def _device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def reconstruct_transcript(
    model: torch.nn.Module,
    decoder_grads: Mapping[str, Tensor],
    bow: Sequence[int] | None,
    length: int,
    *,
    restarts: int = 5,
    steps: int = 3000,
    lr: float = 0.05,
    min_lr: float = 0.005,
    halve_every: int = 1000,
    patience: int = 500,
    tol: float = 1e-6,
    labels: str = "softmax",
    penalty: float = 1.0,
    fix_eos: bool = True,
    coverage: float = 1.0,
    init_state: str = "zero",
    label_smoothing: float = 0.0,
    init_scale: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
    match: Sequence[str] = OUTPUT,
    init: str = "random",
    fallback: bool = False,
) -> Transcript:
    """Reconstruct the S target tokens of one utterance from the gradient of one step.

    Args:
        model: the LAS model whose gradient was observed (the global model; not modified).
        decoder_grads: name -> gradient `-update / lr` (the loss's gradient, same shapes as the
            parameters) for every name in `match`.
        bow: the bag of words (token ids that occur among the targets, e.g. RLG's labels, eos
            included); None = the baseline without BoW (labels over the whole vocabulary).
        length: S, the number of target tokens (pieces + eos), e.g. RLG's `num_labels`.
        restarts: random initialisations run as one batch; the smallest distance wins.
        steps, lr, min_lr, halve_every: Adam steps; lr halved every `halve_every` steps,
            not below `min_lr`.
        patience: stop when no restart's argmax transcript changed for this many steps.
        tol: stop when the best distance (sum of relative squared errors) is below it.
        labels: "softmax" (rows of P are a softmax over the BoW) or "penalty" (P free,
            `penalty * sum_t (sum_j P_tj - 1)^2` added, as in the paper).
        fix_eos: the last target is eos (the training protocol): fix P's last row to it when
            eos is in the BoW.
        coverage: weight of `sum_j relu(1 - sum_t P_tj)^2`: every BoW token occurs at least
            once (applied when S >= |BoW|; 0 disables it).
        init_state: "zero" (the LAS speller's initial state and cell, known) or "optimise"
            (free variables, e.g. for a speller initialised from the encoder)
        label_smoothing: the clients' label smoothing (targets `(1-eps) P + eps / V`).
        init_scale: std of the random initial contexts and attention signals.
        device: "auto" (GPU when present), "cpu", "cuda", ...
        tokenizer: optional, with `decode(ids) -> str`, for the text and text scores.
        match: the parameters whose gradients are matched (a subset of `MATCHED`).
        init: "random" (the paper: every restart random) or "span" (beyond the paper: restart 0
            starts from `span_decode`, the others random; random only when that is impossible).
        fallback: beyond the paper: when the BoW run ends with a distance >= `tol` (the
            gradient is not matched: RLG's BoW may miss a piece, as at a trained model), run
            again over the whole vocabulary with the same options and keep the smaller
            distance; `diagnostics["fallback"]` says what ran and which was kept.

    Returns: a `Transcript` (tokens, text, distance, #variables, restarts, steps; diagnostics with
    seconds, per-restart distances, the initial-state source and the stop reason).
    """
    call = dict(locals())  # the arguments, for the fallback run
    start = time.perf_counter()
    if length < 1:
        raise ValueError(f"length must be >= 1 target token, got {length}")
    if restarts < 1 or steps < 0:
        raise ValueError(f"need restarts >= 1 and steps >= 0, got {restarts}, {steps}")
    if labels not in ("softmax", "penalty"):
        raise ValueError(f"labels must be 'softmax' or 'penalty', got {labels!r}")
    if init not in ("random", "span"):
        raise ValueError(f"init must be 'random' or 'span', got {init!r}")
    if init_state not in ("zero", "optimise"):
        raise ValueError(f"init_state must be 'zero' or 'optimise', got {init_state!r}")
    dev = _device(device)
    vocab = model.embed.weight.shape[0]
    bow = list(range(vocab)) if bow is None else sorted({int(t) for t in bow})
    if not bow or min(bow) < 0 or max(bow) >= vocab:
        raise ValueError(f"bow must be non-empty token ids in [0, {vocab}), got {bow[:10]}...")
    with torch.enable_grad():
        prob = _Problem(model, decoder_grads, bow, length, label_smoothing, dev, dtype, match)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        R, S, B = restarts, prob.S, len(prob.bow)

        def rand(*shape: int, scale: float = 1.0) -> Tensor:
            t = torch.randn(*shape, generator=gen, dtype=dtype) * scale
            return t.to(dev).requires_grad_(True)

        ctx = rand(R, S, prob.C, scale=init_scale)
        p_raw = rand(R, S, B) if labels == "softmax" else (1.0 / B + rand(R, S, B, scale=0.01))
        delta = rand(R, S, prob.att, scale=init_scale * 0.01)
        vars_ = [ctx, p_raw, delta] if prob.backprop else [ctx, p_raw]
        eos_idx = (prob.bow == prob.eos).nonzero()
        fixed_eos = bool(fix_eos and len(eos_idx))
        state_src = init_state
        if init_state == "zero":
            s0, c0 = (v.expand(R, -1) for v in prob.init_state)
        else:
            s0, c0 = rand(R, prob.H, scale=init_scale), rand(R, prob.H, scale=init_scale)
            vars_ += [s0, c0]
        n_vars = sum(v[0].numel() for v in vars_)
        if fixed_eos:
            n_vars -= B
            eos_row = torch.zeros(B, dtype=dtype, device=dev)
            eos_row[eos_idx[0, 0]] = 1.0

        init_src = "random"
        if init == "span" and state_src == "zero":
            try:
                span_tokens, span_ctx, _ = span_decode(
                    model, decoder_grads, bow, length, fix_eos=fix_eos, device=dev
                )
            except ValueError as err:  # e.g. S > dec_hidden
                init_src = f"random ({err})"
            else:
                init_src = "span"
                with torch.no_grad():
                    ctx[0] = span_ctx.to(dtype)
                    hot = torch.searchsorted(prob.bow, torch.tensor(span_tokens, device=dev))
                    onehot = torch.nn.functional.one_hot(hot, B).to(dtype)
                    p_raw[0] = SPAN_LOGIT * onehot if labels == "softmax" else onehot

        def soft_labels() -> Tensor:
            p = torch.softmax(p_raw, -1) if labels == "softmax" else p_raw
            if fixed_eos:
                p = torch.cat([p[:, :-1], eos_row.expand(R, 1, B)], 1)
            return p

        opt = torch.optim.Adam(vars_, lr=lr)
        best = (math.inf, None, -1)  # distance, tokens, restart
        last_argmax, unchanged, reason, step = None, 0, "steps", 0
        for step in range(steps + 1):
            p = soft_labels()
            dist = prob.distance(ctx, p, delta, s0, c0)
            argmax = p.detach().argmax(-1)
            with torch.no_grad():
                i = int(dist.argmin())
                if float(dist[i]) < best[0]:
                    best = (float(dist[i]), argmax[i].clone(), i)
            if best[0] < tol:
                reason = "converged"
                break
            if last_argmax is not None and torch.equal(argmax, last_argmax):
                unchanged += 1
                if unchanged >= patience:
                    reason = "unchanged"
                    break
            else:
                unchanged = 0
            last_argmax = argmax
            if step == steps:
                break
            loss = dist.sum()
            if labels == "penalty":
                loss = loss + penalty * (p.sum(-1) - 1).pow(2).sum()
            if coverage and S >= B:  # every BoW token occurs at least once
                loss = loss + coverage * torch.relu(1 - p.sum(1)).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if halve_every and (step + 1) % halve_every == 0:
                for group in opt.param_groups:
                    group["lr"] = max(group["lr"] / 2, min_lr)
        final = dist.detach().cpu().tolist()
    tokens = tuple(int(prob.bow[j]) for j in best[1].cpu().tolist())
    text = tokenizer.decode(list(tokens)) if tokenizer is not None else None
    found = Transcript(
        tokens=tokens,
        text=text,
        distance=best[0],
        num_variables=int(n_vars),
        restarts=R,
        steps=step,
        eos_id=prob.eos,
        tokenizer=tokenizer,
        diagnostics={
            "seconds": time.perf_counter() - start,
            "distance": best[0],
            "final_distances": final,
            "best_restart": best[2],
            "steps": step,
            "stop": reason,
            "init_state": state_src,
            "init": init_src,
            "num_variables": int(n_vars),
            "bow_size": B,
            "length": S,
            "device": str(dev),
            "parts": {k: float(v[best[2]]) for k, v in prob.last_parts.items()},
        },
    )
    if not (fallback and call["bow"] is not None and found.distance >= tol):
        return found
    wide = reconstruct_transcript(**{**call, "bow": None, "fallback": False})
    kept = wide if wide.distance < found.distance else found
    kept.diagnostics["fallback"] = {
        "bow_distance": found.distance, "vocab_distance": wide.distance,
        "kept": "vocab" if kept is wide else "bow",
    }  # fmt: skip
    kept.diagnostics["seconds"] = time.perf_counter() - start
    return kept

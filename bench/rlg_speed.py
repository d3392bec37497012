"""Speed of `reveal_labels` against a plain per-class LP, on realistic random updates.

For each (C, d, S): one SGD step of a randomly initialised linear head (float32, W ~ N(0, 1/d),
zero bias) on S samples with SiLU features of N(0, 1) inputs and uniformly drawn labels; the
update `after - before` is formed in float32, as a client would send it.

Columns:
- rlg_s: median seconds of `reveal_labels(update)` (S estimated, no oracle); rlg_known_s with
  S given.
- floor_s: the floor RLG is built on, one float32 Gaussian sketch pass `W @ Omega` with
  k = 2S + 10 columns (Omega drawn beforehand), timed interleaved with rlg_s in the same run;
  x_floor = rlg_s / floor_s (also as CPU seconds, `x_floor_cpu`: steadier on a loaded machine).
- rlg_cold_s: the same call with the sketch-matrix cache cleared first (a server's first update
  of a shape; later updates of that shape reuse the drawn matrix, as rlg_s does).
- stages: where RLG's time goes (median over repeats, seconds): sketch (the right sketch
  passes), rank (Gram + eigendecomposition + rule), basis (the one pass W z that replaces a
  refinement, and its orthonormalisation), noise (the noise estimate), cone (the cone test).
- pass_s: one pass over the update (its column sums in float64): the floor of reading it;
  rowspace_s: `row_space` alone (sketch + basis pass + noise estimate).
- ref_s: the reference, a plain HiGHS LP per class against all C columns on an exact float64
  basis (eigendecomposition of W^T W): eigh time + C * (mean seconds per LP over a sample of
  classes: every true label and random others). Extrapolated, not run on all classes.
- agree: RLG's labels equal the true labels AND the reference LP gives the same verdict as RLG
  on every sampled class (labels and non-labels) -- a sampled check for large C.

Usage: `python bench/rlg_speed.py [--quick] [--repeats 5] [--lp-sample 20] [--threads 2]`; JSON in
`bench/results/rlg_speed[_quick].json`. Load average is printed and recorded: timings on a
shared CPU drift, the ratio to the floor much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from attacks.rlg import reveal_labels
from attacks.rlg_cone import separable_lp
from attacks.rlg_rank import clear_sketch_cache, row_space

RESULTS = Path(__file__).resolve().parent / "results"


def realistic_update(rng: np.random.Generator, c: int, d: int, s: int, lr: float = 0.05):
    """(update (C, d) float32, true labels (S,)): one SGD step of mean cross-entropy."""
    w0 = (rng.standard_normal((c, d), dtype=np.float32) / np.float32(np.sqrt(d))).astype(np.float32)
    z = rng.standard_normal((s, d)).astype(np.float32)
    h = z / (1 + np.exp(-z))
    logits = (h @ w0.T).astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = rng.integers(0, c, size=s)
    g = p
    g[np.arange(s), labels] -= 1
    grad = (g.T.astype(np.float32) @ h) / np.float32(s)
    w1 = w0 - np.float32(lr) * grad
    return w1 - w0, labels


def exact_basis(w: np.ndarray, rank: int) -> np.ndarray:
    """Float64 orthonormal basis (C, rank) of the centred update, from eigh(W^T W)."""
    w64 = w.astype(np.float64)
    w64 -= w64.mean(axis=0)
    evals, vecs = np.linalg.eigh(w64.T @ w64)
    top = vecs[:, ::-1][:, :rank] / np.sqrt(evals[::-1][:rank])
    q, _ = np.linalg.qr(w64 @ top)
    return q


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


STAGES = ("sketch", "rank", "basis", "noise", "cone")


def against_floor(w: np.ndarray, s: int, repeats: int, seed: int) -> dict:
    """RLG (S estimated) and its floor, one fp32 Gaussian sketch pass with k = 2S + 10,
    interleaved so both see the same load: median wall and CPU seconds, stage medians."""
    omega = np.random.default_rng(seed).standard_normal((w.shape[1], 2 * s + 10), np.float32)
    w @ omega  # warm the caches and BLAS threads once
    wall = {"floor": [], "rlg": [], "rlg_cold": []}
    cpu = {"floor": [], "rlg": [], "rlg_cold": []}
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    found = None
    for _ in range(repeats):
        for name in ("floor", "rlg_cold", "rlg"):
            if name == "rlg_cold":
                clear_sketch_cache()  # a first call: the sketch matrix is drawn, not cached
            t, c = time.perf_counter(), time.process_time()
            if name == "floor":
                w @ omega
            else:
                found = reveal_labels(w, threads=None)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        for k in STAGES:  # of the warm call (the server's case: every update has this shape)
            stages[k].append(found.diagnostics.get("seconds_stages", {}).get(k, 0.0))
    med = {f"{n}_s": float(np.median(v)) for n, v in wall.items()}
    med.update({f"{n}_cpu_s": float(np.median(v)) for n, v in cpu.items()})
    med["x_floor"] = med["rlg_s"] / med["floor_s"]
    med["x_floor_cpu"] = med["rlg_cpu_s"] / med["floor_cpu_s"]
    med["stages_s"] = {k: float(np.median(v)) for k, v in stages.items()}
    return {**med, "found": found}


def run_case(
    c: int, d: int, s: int, repeats: int, lp_sample: int, seed: int, ref: bool = True
) -> dict:
    rng = np.random.default_rng(seed)
    w, labels = realistic_update(rng, c, d, s)
    truth = tuple(sorted(set(labels.tolist())))
    pass_s, _ = timed(lambda: w.sum(axis=0, dtype=np.float64), repeats)
    rowspace_s, _ = timed(lambda: row_space(w), repeats)
    floor = against_floor(w, s, repeats, seed)
    found = floor.pop("found")
    rlg_s = floor["rlg_s"]
    known_s, found_known = timed(lambda: reveal_labels(w, num_labels=s, threads=None), repeats)

    eig_s = per_lp = ref_s = np.nan
    sample, lp_agrees = [], None
    if ref:
        t = time.perf_counter()
        basis = exact_basis(w, found.num_labels if found.ok else s)
        eig_s = time.perf_counter() - t
        others = np.setdiff1d(np.arange(c), truth)
        sample = np.concatenate([truth, rng.choice(others, size=lp_sample, replace=False)])
        t = time.perf_counter()
        verdict = separable_lp(basis, sample)
        per_lp = (time.perf_counter() - t) / len(sample)
        ref_s = eig_s + per_lp * c
        rlg_set = set(found.labels) if found.ok else set()
        pairs = zip(sample, verdict, strict=True)
        lp_agrees = all(bool(v) == (int(k) in rlg_set) for k, v in pairs)
    return {
        "C": c,
        "d": d,
        "S": s,
        **floor,
        "rlg_known_s": known_s,
        "pass_s": pass_s,
        "rowspace_s": rowspace_s,
        "ref_s": ref_s,
        "ref_eigh_s": eig_s,
        "ref_lp_per_class_s": per_lp,
        "speedup": ref_s / rlg_s,
        "x_pass": rlg_s / pass_s,
        "x_rowspace": rlg_s / rowspace_s,
        "exact_vs_truth": found.ok and found.labels == truth,
        "known_exact_vs_truth": found_known.ok and found_known.labels == truth,
        "rank": found.num_labels if found.ok else None,
        "sketch_size": found.diagnostics.get("sketch_size"),
        "lp_sample": len(sample),
        "lp_agrees_on_sample": lp_agrees,
        "status": found.status,
        "candidates": found.diagnostics.get("candidates"),
        "lp_calls": found.diagnostics.get("lp_calls"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cases, small LP sample")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lp-sample", type=int, default=20, help="random non-labels for the LP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ref", action="store_true", help="skip the LP reference (slow)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (big products)")
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads, user_api="blas")
    if args.quick:
        grid = [(1000, 512, 10), (16000, 2048, 50), (32000, 2048, 50)]
        repeats, lp_sample = args.repeats, 3
    else:
        grid = [(c, d, s) for c in (1000, 16000, 32000) for d in (512, 2048) for s in (10, 50, 100)]
        repeats, lp_sample = args.repeats, args.lp_sample
    load_before = os.getloadavg()
    rows = []
    head = (
        f"{'C':>6} {'d':>5} {'S':>4} {'rlg_s':>7} {'cold_s':>7} {'floor_s':>7} {'xfloor':>6} "
        f"{'xf_cpu':>6} "
        f"{'known_s':>7} {'rowsp_s':>7} {'ref_s':>9} {'speedup':>8} exact lp_agree | "
        + " ".join(f"{k:>6}" for k in STAGES)
    )
    print(f"load average {load_before[0]:.1f}; BLAS threads {args.threads}", flush=True)
    print(head)
    for i, (c, d, s) in enumerate(grid):
        row = run_case(c, d, s, repeats, lp_sample, args.seed + i, ref=not args.no_ref)
        rows.append(row)
        print(
            f"{c:>6} {d:>5} {s:>4} {row['rlg_s']:>7.3f} {row['rlg_cold_s']:>7.3f} "
            f"{row['floor_s']:>7.3f} "
            f"{row['x_floor']:>6.2f} {row['x_floor_cpu']:>6.2f} {row['rlg_known_s']:>7.3f} "
            f"{row['rowspace_s']:>7.3f} {row['ref_s']:>9.1f} {row['speedup']:>8.0f} "
            f"{row['exact_vs_truth']!s:>5} {row['lp_agrees_on_sample']!s:>5} | "
            + " ".join(f"{row['stages_s'][k]:>6.3f}" for k in STAGES),
            flush=True,
        )
    out = {
        "bench": "rlg_speed",
        "quick": args.quick,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "blas_threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "rlg_speed_quick.json" if args.quick else "rlg_speed.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
    print(f"load average before {load_before}, after {out['load_average_after']}")
    print("stages: sketch, rank, basis (the one pass W z and its QR), noise, cone (seconds)")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()

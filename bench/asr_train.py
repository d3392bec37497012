"""Centralised training of the LAS checkpoints (untrained, partial, trained) for asr_bow.py.

Centralised (not federated) Adam training on the train split of the corpus, batches of similar
length, SpecAugment-style masking; checkpoints at step 0, at `--partial` steps and at the end,
each with its test WER. Optional joint CTC-attention training (`--ctc-weight`, Kim et al. 2017):
an auxiliary linear CTC head on the encoder states (training only: checkpoints hold the LAS
alone). On this 2.4 h corpus neither variant generalises on 2 CPU cores: the decoder memorises
the training utterances (test WER ~1.0 after 3,000 steps without CTC; with weight 0.3 the test
loss bottomed at 4.24 after 500-750 steps and rose while the training loss fell to ~1.6).

    python bench/asr_train.py --steps 1500 --partial 150     # default corpus, about 10-15 min
    python bench/asr_train.py --quick                          # tiny corpus, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedsim.asr.corpus import cache_root
from fedsim.asr.metrics import word_error_rate
from fedsim.tasks.asr import AsrTask


def checkpoint_dir(corpus: str, vocab_size: int, cache_dir: str | None = None) -> Path:
    """Where the checkpoints live: `<cache>/asr/checkpoints/<corpus>_v<vocab>/`."""
    return cache_root(cache_dir) / "checkpoints" / f"{corpus}_v{vocab_size}"


def length_batches(task: AsrTask, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Train-split batches of similar length (shuffled), one epoch."""
    train = task.corpus.indices("train")
    frames = np.array([task.corpus.utterances[i].frames for i in train])
    order = train[np.argsort(frames + rng.uniform(0, 50, len(frames)))]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def spec_augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """SpecAugment-style masks (training only): 2 bands of <= 6 mel bins and 2 spans of <= 20
    frames per utterance set to 0 (the per-utterance mean)."""
    x = x.clone()
    for b in range(x.shape[0]):
        for _ in range(2):
            f, t = int(rng.integers(0, 7)), int(rng.integers(0, 21))
            f0 = int(rng.integers(0, x.shape[2] - f + 1))
            t0 = int(rng.integers(0, x.shape[1] - t + 1))
            x[b, :, f0 : f0 + f] = 0
            x[b, t0 : t0 + t] = 0
    return x


def ctc_loss(model, head: torch.nn.Linear, x, lengths, y, eos_id: int) -> torch.Tensor:
    """CTC loss of the auxiliary head on the encoder states; targets = pieces without eos/pad
    (blank = the pad id 0, which never occurs in a transcript)."""
    h, mask = model.encode(x, lengths)
    logp = head(h).log_softmax(-1).transpose(0, 1)  # (T', B, V)
    keep = (y != 0) & (y != eos_id)
    return torch.nn.functional.ctc_loss(
        logp, y[keep], mask.sum(1), keep.sum(1), blank=0, zero_infinity=True
    )


def train(task: AsrTask, steps: int, partial: int, batch_size: int, lr: float, ckpt_dir: Path,
          seed: int = 0, minutes: float = float("inf"),
          ctc_weight: float = 0.0) -> list[dict]:  # fmt: skip
    """Train from a seeded initialisation; save untrained/partial/trained state dicts.
    Training stops after `steps` steps or `minutes` of wall time, whichever comes first."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = task.build_model()
    head = torch.nn.Linear(model.output.in_features - model.decoder.hidden_size,
                           model.output.out_features)  # fmt: skip
    params = list(model.parameters()) + (list(head.parameters()) if ctc_weight > 0 else [])
    opt = torch.optim.Adam(params, lr=lr)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log, batches, step, start = [], [], 0, time.perf_counter()

    def save(name: str) -> None:
        torch.save(model.state_dict(), ckpt_dir / f"{name}.pt")
        metrics = task.evaluate(model, torch.device("cpu"))
        row = {"checkpoint": name, "step": step, "seconds": time.perf_counter() - start, **metrics}
        log.append(row)
        print(json.dumps(row), flush=True)

    save("untrained")
    while step < steps and time.perf_counter() - start < 60 * minutes:
        if not batches:
            batches = length_batches(task, batch_size, rng)
        model.train()
        x, lengths, inp, y = task.batch(batches.pop())
        x = spec_augment(x, rng)
        logits = model(x, lengths, inp)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=0)
        if ctc_weight > 0:
            ctc = ctc_loss(model, head, x, lengths, y, model.eos_id)
            loss = (1 - ctc_weight) * loss + ctc_weight * ctc
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            print(
                f"step {step} loss {loss.item():.3f} {time.perf_counter() - start:.0f}s", flush=True
            )
        if step % 250 == 0:
            with torch.no_grad():
                model.eval()
                idx = task.eval_indices()[:32]
                test = float(task.loss(model, idx))
                refs = [task.corpus.utterances[i].text for i in idx]
                wer = word_error_rate(refs, task.transcribe(model, idx))
            print(f"step {step} test loss {test:.3f} WER(32) {wer:.3f}", flush=True)
        if step == partial:
            save("partial")
    save("trained")
    (ckpt_dir / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny corpus, 60 steps")
    parser.add_argument("--corpus", default="default")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--partial", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=float("inf"), help="wall-time cap")
    parser.add_argument("--ctc-weight", type=float, default=0.0, help="> 0: joint CTC")
    parser.add_argument("--eval-utterances", type=int, default=100)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.corpus, args.steps, args.partial, args.batch_size = "tiny", 60, 20, 8
    task = AsrTask(corpus=args.corpus, vocab_size=args.vocab_size,
                   eval_utterances=args.eval_utterances, cache_dir=args.cache_dir)  # fmt: skip
    ckpt = checkpoint_dir(args.corpus, args.vocab_size, args.cache_dir)
    train(task, args.steps, args.partial, args.batch_size, args.lr, ckpt, minutes=args.minutes,
          ctc_weight=args.ctc_weight)  # fmt: skip


if __name__ == "__main__":
    main()

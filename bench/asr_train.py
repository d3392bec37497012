"""Centralised training of the speech checkpoints (untrained, partial, trained) for asr_bow.py.

Centralised (not federated) Adam training on the train split of the corpus, batches of similar
length, SpecAugment-style masking; checkpoints at step 0, at `--partial` steps and at the end,
each with its test WER.

`--model las_whisper` trains the LAS decoder over the frozen Whisper tiny.en encoder's cached
states (conf/model/las_whisper.yaml) on the large corpus: AdamW with a cosine schedule over the
wall-time budget, label smoothing, input dropout and time masks. The trained model, its word
pieces and its WER on every test split (seen voices, Allison, LibriVox, each unseen voice) are
written to the shipped checkpoint folder `fedsim/asr/pretrained/las_whisper/` (`--ship`):

    python -m fedsim.asr.corpus --size large                   # 10 h corpus, ~10 min
    python bench/asr_train.py --model las_whisper --minutes 80 # the shipped checkpoint

`--model las` (from log-mel, the default corpus): optional joint CTC-attention training
(`--ctc-weight`, Kim et al. 2017): an auxiliary linear CTC head on the encoder states (training
only: checkpoints hold the LAS alone). On this 2.4 h corpus neither variant generalises on 2 CPU
cores: the decoder memorises
the training utterances (test WER ~1.0 after 3,000 steps without CTC; with weight 0.3 the test
loss bottomed at 4.24 after 500-750 steps and rose while the training loss fell to ~1.6).

    python bench/asr_train.py --steps 1500 --partial 150     # model=las, default corpus, ~12 min
    python bench/asr_train.py --quick                          # tiny corpus, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from fedsim.asr.corpus import cache_root
from fedsim.asr.metrics import word_error_rate
from fedsim.asr.pretrained import SHIPPED, save_checkpoint
from fedsim.tasks.asr import AsrTask

CONF = Path(__file__).resolve().parents[1] / "fedsim" / "conf" / "model"


def checkpoint_dir(
    corpus: str, vocab_size: int, cache_dir: str | None = None, model: str = "las"
) -> Path:
    """Where the checkpoints live: `<cache>/asr/checkpoints/<corpus>_v<vocab>[_<model>]/`."""
    suffix = "" if model == "las" else f"_{model}"
    return cache_root(cache_dir) / "checkpoints" / f"{corpus}_v{vocab_size}{suffix}"


def speech_task(
    model: str, corpus: str | None = None, ship: Path | None = None, **kwargs
) -> AsrTask:
    """The task of `model` ("las": log-mel LAS; "las_whisper": conf/model/las_whisper.yaml from
    scratch, with the word pieces of the checkpoint folder `ship`, default the shipped one) on
    `corpus` (default: "large" for las_whisper, "default" for las)."""
    corpus = corpus or ("large" if model == "las_whisper" else "default")
    node = None
    if model == "las_whisper":
        node = OmegaConf.to_container(OmegaConf.load(CONF / "las_whisper.yaml"))
        folder = ship or SHIPPED / "las_whisper"
        node = {**node, "init": "scratch", "pretrained": str(Path(folder).resolve())}
    return AsrTask(corpus=corpus, model=node, **kwargs)


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, regularisers and the masks' sizes (in input frames / dims)."""

    lr: float = 3e-3
    weight_decay: float = 0.0  # > 0: AdamW
    cosine: bool = False  # decay lr by a cosine over the wall-time budget (to lr / 20)
    label_smoothing: float = 0.0
    input_dropout: float = 0.0
    max_band: int = 6  # feature dims masked per band (2 bands)
    max_span: int = 20  # frames masked per span (2 spans)


RECIPES = {
    "las": Recipe(),
    "las_whisper": Recipe(lr=2e-3, weight_decay=1e-2, cosine=True, label_smoothing=0.1,
                          input_dropout=0.1, max_band=0, max_span=5),
}  # fmt: skip


def length_batches(task: AsrTask, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Train-split batches of similar length (shuffled), one epoch."""
    train = task.corpus.indices("train")
    frames = np.array([task.corpus.utterances[i].frames for i in train])
    order = train[np.argsort(frames + rng.uniform(0, 50, len(frames)))]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def spec_augment(
    x: torch.Tensor, rng: np.random.Generator, max_band: int = 6, max_span: int = 20
) -> torch.Tensor:
    """SpecAugment-style masks (training only): 2 bands of <= `max_band` feature dims and 2 spans
    of <= `max_span` frames per utterance set to 0 (the per-utterance mean for log-mel)."""
    x = x.clone()
    for b in range(x.shape[0]):
        for _ in range(2):
            f, t = int(rng.integers(0, max_band + 1)), int(rng.integers(0, max_span + 1))
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


def split_wers(task: AsrTask, model, limit: int = 0) -> dict[str, float]:
    """Greedy WER per test set: "test" (unseen sentences, seen voices) by source (flite voices,
    Allison, LibriVox) and each held-out voice's split; `limit` > 0 caps utterances per set."""
    corpus = task.corpus
    sets = {}
    for split in corpus.splits[1:]:
        idx = corpus.indices(split)
        if split == "test":
            for source in ("flite", "asterisk", "librivox"):
                sets[f"test/{source}"] = [i for i in idx if corpus.utterances[i].source == source]
        else:
            sets[split] = list(idx)
    out = {}
    for name, idx in sets.items():
        idx = [int(i) for i in (idx[:limit] if limit else idx)]
        if idx:
            idx = sorted(idx, key=lambda i: corpus.utterances[i].frames)
            refs = [corpus.utterances[i].text for i in idx]
            out[name] = round(word_error_rate(refs, task.transcribe(model, idx)), 4)
    return out


def _lr_at(recipe: Recipe, elapsed: float, budget: float) -> float:
    if not recipe.cosine or not math.isfinite(budget):
        return recipe.lr
    frac = min(1.0, elapsed / budget)
    return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(task: AsrTask, steps: int, partial: int, batch_size: int, lr: float, ckpt_dir: Path,
          seed: int = 0, minutes: float = float("inf"), ctc_weight: float = 0.0,
          recipe: Recipe | None = None) -> list[dict]:  # fmt: skip
    """Train from a seeded initialisation; save untrained/partial/trained state dicts.
    Training stops after `steps` steps or `minutes` of wall time, whichever comes first."""
    recipe = recipe or Recipe(lr=lr)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = task.build_model()
    head = torch.nn.Linear(model.output.in_features - model.decoder.hidden_size,
                           model.output.out_features)  # fmt: skip
    params = list(model.parameters()) + (list(head.parameters()) if ctc_weight > 0 else [])
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
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
        x = spec_augment(x, rng, recipe.max_band, recipe.max_span)
        if recipe.input_dropout > 0:
            x = torch.nn.functional.dropout(x, recipe.input_dropout)
        for group in opt.param_groups:
            group["lr"] = _lr_at(recipe, time.perf_counter() - start, 60 * minutes)
        logits = model(x, lengths, inp)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y.flatten(), ignore_index=0,
            label_smoothing=recipe.label_smoothing,
        )  # fmt: skip
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
    parser.add_argument("--model", default="las", choices=sorted(RECIPES))
    parser.add_argument("--corpus", default=None, help="default: large (las_whisper), default")
    parser.add_argument(
        "--ship",
        default=None,
        help="las_whisper: checkpoint folder to write "
        "(default fedsim/asr/pretrained/las_whisper; 'none': do not ship)",
    )
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--partial", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: the model's recipe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=float("inf"), help="wall-time cap")
    parser.add_argument("--ctc-weight", type=float, default=0.0, help="> 0: joint CTC")
    parser.add_argument("--eval-utterances", type=int, default=100)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.corpus = args.corpus or ("large" if args.model == "las_whisper" else "default")
    if args.quick:
        args.corpus, args.steps, args.partial, args.batch_size = "tiny", 60, 20, 8
    recipe = RECIPES[args.model]
    if args.lr is not None:
        recipe = Recipe(**{**recipe.__dict__, "lr": args.lr})
    ship = None
    if args.model == "las_whisper" and args.ship != "none" and not (args.quick and not args.ship):
        ship = Path(args.ship or SHIPPED / "las_whisper")
    task = speech_task(args.model, args.corpus, ship, vocab_size=args.vocab_size,
                       eval_utterances=args.eval_utterances, cache_dir=args.cache_dir)  # fmt: skip
    ckpt = checkpoint_dir(args.corpus, args.vocab_size, args.cache_dir, args.model)
    start = time.perf_counter()
    log = train(task, args.steps, args.partial, args.batch_size, recipe.lr, ckpt,
                minutes=args.minutes, ctc_weight=args.ctc_weight, recipe=recipe)  # fmt: skip
    if args.model != "las_whisper":
        return
    trained = task.build_model()
    trained.load_state_dict(torch.load(ckpt / "trained.pt", weights_only=True))
    wers = split_wers(task, trained)
    print("test WER by set: " + json.dumps(wers), flush=True)
    info = {"model": "las_whisper", "corpus": task.corpus.info,
            "recipe": recipe.__dict__, "batch_size": args.batch_size, "steps": log[-1]["step"],
            "train_minutes": round((time.perf_counter() - start) / 60, 1),
            "test_wer": wers, "log": log}  # fmt: skip
    (ckpt / "trained_wer.json").write_text(json.dumps(info, indent=1))
    if ship is not None:
        save_checkpoint(ship, trained, task.tokenizer.path, info)
        print(f"shipped checkpoint: {ship}", flush=True)


if __name__ == "__main__":
    main()

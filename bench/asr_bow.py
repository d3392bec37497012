"""RLG on speech: the bag of words (BoW) of utterances from the update of the LAS output projection.

Reproduces the ASR results of Dang et al. (2021) on the offline corpus (`fedsim.asr.corpus`):
- Table 2 analog: BoW from a one-utterance, one-step update at the untrained, partially trained
  and trained checkpoints (from `bench/asr_train.py`, centralised Adam training), plus the
  model's test WER; "seen" rows: the same on train-split utterances (what clients hold, and
  what a model that memorises predicts confidently); an untrained 16k-piece row.
- Table 3: (N, K) = (4,1), (8,1), (1,4), (1,8), (2,2) at the untrained and the trained
  checkpoint, with the estimated number of tokens and with the true one.
- Table 4 (ASR column): none, Sign-SGD, GradDrop 50 % and 90 % on the one-utterance update, at
  the untrained and the trained checkpoint.
- Seconds per RLG call at 1k and 16k pieces.
The evaluation set: up to `--per-length` test utterances per transcript length (characters)
for lengths <= 50. Truth = the target tokens (pieces + eos); scores are those of `LabelSet`,
with eos added when RLG misses it (the rlg plugin's `protocol_labels` default); the
"w/o eos rule" columns are the paper's RLG alone. As in the plugin, `max_labels` = utterances x
the longest target in the corpus (90 tokens at 1k pieces), at most d / 2: an update whose
estimated S is larger is scored as a failure at once instead of after a minutes-long cone test
at S ~ d.

    python bench/asr_train.py            # checkpoints first (cached)
    python bench/asr_bow.py [--quick]    # table + bench/results/asr_bow[_quick].json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_train import checkpoint_dir, speech_task

from attacks.rlg import add_known_labels, reveal_labels
from defenses.graddrop import GradDrop
from defenses.signsgd import SignSGD
from fedcore import Truth
from fedsim.asr.metrics import word_error_rate
from fedsim.tasks.asr import AsrTask
from fedsim.tasks.base import TrainConfig

OUT = Path(__file__).parent / "results"
PAPER = {
    "table2": {"untrained": (0, 0.999, 0.988), "partial": (0, 0.996, 0.955),
               "trained": (0.092, 0.994, 0.933)},
    "table3_em": {(4, 1): 1.0, (8, 1): 1.0, (1, 4): 0.535, (1, 8): 0.160, (2, 2): 0.330},
    "table4_em": {"none": 0.988, "signsgd": 0.104, "graddrop50": 0.881, "graddrop90": 0.866},
}  # fmt: skip


def eval_set(
    task: AsrTask, per_length: int, max_chars: int, seed: int = 0, split: str = "test"
) -> list[int]:
    """Up to `per_length` utterances of `split` for each transcript length <= max_chars."""
    by_len = defaultdict(list)
    for i in task.corpus.indices(split):
        text = task.corpus.utterances[i].text
        if len(text) <= max_chars:
            by_len[len(text)].append(int(i))
    rng = np.random.default_rng(seed)
    out = []
    for length in sorted(by_len):
        items = by_len[length]
        out += sorted(rng.choice(items, min(per_length, len(items)), replace=False).tolist())
    return out


@torch.no_grad()
def label_confidence(task, model, indices) -> dict[int, float]:
    """Per target token of the utterances: the model's mean teacher-forced probability of it at
    the positions where it is the target (a label the model is sure of has coefficient
    `p - 1 ~ 0` in the projection's gradient: the reason RLG can miss it)."""
    x, lengths, inp, y = task.batch(indices)
    probs = torch.softmax(model(x, lengths, inp), -1)
    p_true = probs.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    out: dict[int, list[float]] = defaultdict(list)
    for token, p in zip(y.flatten().tolist(), p_true.flatten().tolist(), strict=True):
        if token != task.tokenizer.pad_id:
            out[token].append(p)
    return {t: float(np.mean(v)) for t, v in out.items()}


def attack_update(task, state, steps, lr, defense=None, num_labels="estimate", diagnose=False):
    """Train `steps` from `state`, (defend,) run RLG on the projection update; return scores.
    `diagnose`: also the model's confidence in the labels RLG found and in those it missed."""
    model = task.build_model()
    model.load_state_dict(state)
    confidence = label_confidence(task, model, steps[0]) if diagnose else {}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, tokens = task.sgd_steps(model, steps, lr)
    update = {k: v - before[k] for k, v in model.state_dict().items()}
    if defense is not None:
        update = defense(update, {"lr": lr})
    truth = Truth(labels=np.zeros((len(steps), 0), int), tokens=tokens)
    true_s = sum(len(u) for step in tokens for u in step)
    start = time.perf_counter()
    spec = task.model_spec()  # as the rlg plugin: the projection's weight and bias updates
    w = update[spec.last_weight]
    bound = min(sum(map(len, steps)) * spec.max_labels_per_sample, w.shape[1] // 2)
    found = reveal_labels(update[spec.last_weight], bias_update=update[spec.last_bias],
                          num_labels=true_s if num_labels == "true" else None,
                          max_labels=bound)  # fmt: skip
    seconds = time.perf_counter() - start
    failed = {"f1": 0.0, "exact": 0.0, "precision": 0.0, "recall": 0.0,
              "length_error": float(true_s)}  # fmt: skip
    plain = found.score(truth) if found.ok else failed
    # The plugin's default (protocol_labels): eos, in every target, is added when missed.
    found = add_known_labels(found, spec.protocol_labels)
    scores = found.score(truth) if found.ok else failed
    row = {**scores, "f1_plain": plain["f1"], "exact_plain": plain["exact"],
           "seconds": seconds, "tokens": true_s, "ok": float(found.ok)}  # fmt: skip
    if diagnose and found.ok:
        got = set(found.labels)
        row["p_missed"] = [confidence[t] for t in confidence if t not in got]
        row["p_found"] = [confidence[t] for t in confidence if t in got]
    return row


def progress(what: str, t0: float) -> None:
    """One line on stderr: what finished, minutes since `t0`."""
    print(f"{what} ({(time.perf_counter() - t0) / 60:.1f} min)", file=sys.stderr, flush=True)


def summarise(rows: list[dict]) -> dict:
    keys = ["length_error", "precision", "recall", "f1", "exact", "f1_plain", "exact_plain",
            "seconds", "tokens", "ok"]  # fmt: skip
    out = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    out["seconds_max"] = float(np.max([r["seconds"] for r in rows]))
    out["n"] = len(rows)
    missed = [p for r in rows for p in r.get("p_missed", [])]
    found = [p for r in rows for p in r.get("p_found", [])]
    if found:  # diagnosed rows: how sure the model was of the labels RLG missed and found
        out["missed_labels"] = len(missed)
        out["p_missed_median"] = float(np.median(missed)) if missed else None
        out["missed_with_p_over_0.9"] = float(np.mean(np.array(missed) > 0.9)) if missed else None
        out["p_found_median"] = float(np.median(found))
    return out


def load_states(
    task: AsrTask, corpus: str, vocab: int, cache_dir, model: str = "las"
) -> dict[str, dict]:
    """Checkpoints from asr_train.py; a seeded fresh model stands in for a missing untrained one."""
    folder = checkpoint_dir(corpus, vocab, cache_dir, model)
    states = {}
    for name in ("untrained", "partial", "trained"):
        path = folder / f"{name}.pt"
        if path.exists():
            states[name] = torch.load(path)
    if "untrained" not in states:
        torch.manual_seed(0)
        states["untrained"] = task.build_model().state_dict()
    return states


def round_seconds(task: AsrTask, state: dict, clients: int = 4, n: int = 8, k: int = 1) -> dict:
    """Wall time of one federated round done in-process: `clients` local trainings + evaluation."""
    start = time.perf_counter()
    for pid in range(clients):
        model = task.build_model()
        model.load_state_dict(state)
        task.local_train(model, pid, clients, TrainConfig(1, 0.05, k, n), torch.device("cpu"))
    train_s = time.perf_counter() - start
    model.load_state_dict(state)
    task.evaluate(model, torch.device("cpu"))
    return {"train_seconds": train_s, "eval_seconds": time.perf_counter() - start - train_s,
            "eval_utterances": len(task.eval_indices())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 utterances per length, fewer draws")
    parser.add_argument("--model", default="las", choices=["las", "las_whisper"])
    parser.add_argument("--corpus", default=None, help="default: large (las_whisper), default")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--per-length", type=int, default=10)
    parser.add_argument("--max-chars", type=int, default=50)
    parser.add_argument("--draws", type=int, default=30, help="samples per (N, K) and defense")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wer-utterances", type=int, default=0, help="test WER on (0: all)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    if args.quick:
        args.per_length, args.draws, args.wer_utterances = 2, 6, 40
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load = "{:.2f} {:.2f} {:.2f}".format(*__import__("os").getloadavg())
    task = speech_task(
        args.model, args.corpus, vocab_size=args.vocab_size, cache_dir=args.cache_dir
    )
    args.corpus = task.corpus.info["options"]["size"]
    states = load_states(task, args.corpus, args.vocab_size, args.cache_dir, args.model)
    evalset = eval_set(task, args.per_length, args.max_chars)
    seen_set = eval_set(task, args.per_length, args.max_chars, split="train")
    rng = np.random.default_rng(1)
    info = {k: v for k, v in task.corpus.info.items() if k != "options"}
    result: dict = {"args": vars(args), "load_before": load, "eval_utterances": len(evalset),
                    "corpus": info}  # fmt: skip
    ckpts = checkpoint_dir(args.corpus, args.vocab_size, args.cache_dir, args.model)
    log_path = ckpts / "train_log.json"
    train_log = (
        {r["checkpoint"]: r for r in json.loads(log_path.read_text())} if log_path.exists() else {}
    )

    table2 = {}
    task.eval_utterances = args.wer_utterances
    for name, state in states.items():
        model = task.build_model()
        model.load_state_dict(state)
        test = task.evaluate(model, torch.device("cpu"))
        train_idx = np.random.default_rng(2).choice(task.corpus.indices("train"), 40, False)
        refs = [task.corpus.utterances[i].text for i in train_idx]
        train_wer = word_error_rate(refs, task.transcribe(model, train_idx))
        rows = [attack_update(task, state, [[i]], args.lr, diagnose=True) for i in evalset]
        table2[name] = {**summarise(rows), "test_wer": test["wer"], "test_loss": test["loss"],
                        "train_wer_40": train_wer,
                        "train": train_log.get(name)}  # fmt: skip
        # The same on training utterances, which the trained model has seen (and fits).
        seen = [attack_update(task, state, [[i]], args.lr) for i in seen_set]
        table2[f"{name}, seen"] = {**summarise(seen), "train_wer_40": train_wer}
        progress(f"table 2: {name} done", t0)
    task.eval_utterances = 64
    # 16k pieces, untrained: scores and seconds per call (las: las_whisper ships 1k pieces).
    if args.model == "las":
        task16 = AsrTask(corpus=args.corpus, vocab_size=16000, cache_dir=args.cache_dir)
        torch.manual_seed(0)
        state16 = task16.build_model().state_dict()
        ev16 = evalset[:: max(1, len(evalset) // (10 if args.quick else 40))]
        table2["untrained_16k"] = summarise(
            [attack_update(task16, state16, [[i]], args.lr) for i in ev16]
        )
        progress("table 2: 16k done", t0)
    result["table2"] = table2

    state = states.get("trained", states["untrained"])
    table3 = {}
    for ckpt in [c for c in ("untrained", "trained") if c in states]:
        for n, k in [(4, 1), (8, 1), (1, 4), (1, 8), (2, 2)]:
            for mode in ("estimate", "true"):
                rows = []
                for _ in range(args.draws):
                    picks = rng.choice(evalset, size=(k, n), replace=False).tolist()
                    rows.append(attack_update(task, states[ckpt], picks, args.lr, num_labels=mode))
                table3[f"{ckpt},N={n},K={k},{mode}"] = summarise(rows)
    result["table3"] = table3
    progress("table 3 done", t0)

    table4 = {}
    defenses = {"none": None, "signsgd": SignSGD(), "graddrop50": GradDrop(0.5),
                "graddrop90": GradDrop(0.9)}  # fmt: skip
    sub = [evalset[i] for i in rng.permutation(len(evalset))[: args.draws * 2]]
    for ckpt in [c for c in ("untrained", "trained") if c in states]:
        for name, defense in defenses.items():
            rows = [attack_update(task, states[ckpt], [[i]], args.lr, defense) for i in sub]
            table4[f"{ckpt},{name}"] = summarise(rows)
    result["table4"] = table4
    result["round"] = round_seconds(task, state)
    result["minutes"] = (time.perf_counter() - t0) / 60
    result["load_after"] = "{:.2f} {:.2f} {:.2f}".format(*__import__("os").getloadavg())

    print_tables(result)
    OUT.mkdir(exist_ok=True)
    model = "" if args.model == "las" else f"_{args.model}"
    path = OUT / f"asr_bow{model}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}")


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"Table 2 analog: one utterance, one step ({result['eval_utterances']} utts)")
    for col in [
        "checkpoint",
        "test WER",
        "train WER",
        "LE",
        "prec",
        "rec",
        "F1",
        "EM",
        "EM w/o eos rule",
        "s/call",
        "paper LE/F1/EM",
    ]:
        t.add_column(col)
    for name, r in result["table2"].items():
        wer = f"{r['test_wer']:.3f}" if "test_wer" in r else "-"
        paper = PAPER["table2"].get(name)  # (the paper's rows are on unseen test speech)
        train_wer = f"{r['train_wer_40']:.3f}" if "train_wer_40" in r else "-"
        t.add_row(name, wer, train_wer, f"{r['length_error']:.3f}", f"{r['precision']:.3f}",
                  f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['exact']:.3f}",
                  f"{r['exact_plain']:.3f}",
                  f"{r['seconds']:.3f}", "/".join(map(str, paper)) if paper else "-")  # fmt: skip
    console.print(t)
    t = Table(title="Table 3: N utterances x K steps (checkpoint, N, K, S estimated or true)")
    for col in ["config", "S (tokens)", "LE", "F1", "EM", "EM w/o eos rule", "paper EM (true S)"]:
        t.add_column(col)
    for name, r in result["table3"].items():
        n, k = (int(x.split("=")[1]) for x in name.split(",")[1:3])
        t.add_row(name, f"{r['tokens']:.1f}", f"{r['length_error']:.2f}", f"{r['f1']:.3f}",
                  f"{r['exact']:.3f}", f"{r['exact_plain']:.3f}",
                  str(PAPER["table3_em"][(n, k)]))  # fmt: skip
    console.print(t)
    t = Table(title="Table 4 (ASR): defenses on the one-utterance update")
    for col in ["defense", "LE", "F1", "EM", "EM w/o eos rule", "paper EM"]:
        t.add_column(col)
    for name, r in result["table4"].items():
        t.add_row(name, f"{r['length_error']:.2f}", f"{r['f1']:.3f}", f"{r['exact']:.3f}",
                  f"{r['exact_plain']:.3f}",
                  str(PAPER["table4_em"][name.split(",")[1]]))  # fmt: skip
    console.print(t)
    console.print(f"one round (4 clients, N=8, K=1): {result['round']}")


if __name__ == "__main__":
    main()

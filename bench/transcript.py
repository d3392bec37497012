"""Transcript reconstruction from a one-utterance, one-step update (Dang et al. 2021, Table 5 and
Figure 2 analogs) on the offline corpus with the LAS model.

Per utterance of the evaluation set (test utterances of <= 50 characters): one SGD step (lr 0.05)
from the checkpoint, RLG on the output projection's update gives the BoW and the estimated
length S (never the truth), then `reconstruct_transcript` on the gradient `-update / lr`:
- paper, no BoW, 1 run: random init, labels over the whole vocabulary, 1 restart;
- paper, BoW, 1 run / 5 runs: random init, labels over the BoW;
- span (no BoW / BoW, 1 or 5 runs): restart 0 starts from the exact row-space decoding (beyond
  the paper), further restarts are random;
- span, BoW+fallback: when the BoW run does not match the gradient (RLG's BoW misses a piece),
  rerun over the whole vocabulary and keep the smaller distance (the plugin's default).
`BoW EM` is the bag of words of the reconstruction against the truth (the paper's Table 2
gradient-matching baseline for the BoW).
The paper-method rows (expensive on CPU) use the first `--paper-utterances` utterances.
Figure 2 analog: the same at the untrained / partial / trained checkpoints of `bench/asr_train.py`.

    python bench/asr_train.py                 # checkpoints (cached; untrained is seeded if absent)
    python bench/transcript.py [--quick]      # table + bench/results/transcript[_quick].json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from asr_bow import eval_set, load_states
from asr_train import speech_task

from attacks.rlg import add_known_labels, reveal_labels
from attacks.transcript import TranscriptOptions, decoder_gradients, reconstruct_transcript
from fedcore import Truth
from fedsim.tasks.asr import AsrTask

OUT = Path(__file__).parent / "results"
# Table 5 (16k word pieces, untrained model, 402 utterances): (WER, EM)
PAPER = {
    "no BoW, 1 run": (">1", 0.018),
    "BoW, 1 run": (0.284, 0.519),
    "BoW, 5 runs": (0.010, 0.975),
}
CONFIGS = {  # name -> (use_bow, init, restarts, paper method?, fallback to the whole vocabulary?)
    "paper: no BoW, 1 run": (False, "random", 1, True, False),
    "paper: BoW, 1 run": (True, "random", 1, True, False),
    "paper: BoW, 5 runs": (True, "random", 5, True, False),
    "span: no BoW, 1 run": (False, "span", 1, False, False),
    "span: BoW, 1 run": (True, "span", 1, False, False),
    "span: BoW, 5 runs": (True, "span", 5, False, False),
    "span: no BoW, 5 runs": (False, "span", 5, False, False),
    "span: BoW+fallback, 5 runs": (True, "span", 5, False, True),
}


def attack_one(task: AsrTask, state: dict, index: int, configs: list[str], args) -> dict:
    """One utterance: SGD step, RLG, then each reconstruction config; scores per config."""
    model = task.build_model()
    model.load_state_dict(state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, tokens = task.sgd_steps(model, [[index]], args.client_lr)
    update = {k: v - before[k] for k, v in model.state_dict().items()}
    truth = Truth(labels=np.zeros((1, 0), int), tokens=tokens)
    ref = task.corpus.utterances[index].text
    rlg = reveal_labels(update["output.weight"], bias_update=update["output.bias"])
    # As the rlg plugin (protocol_labels): eos ends every target, added when RLG misses it.
    rlg = add_known_labels(rlg, task.model_spec().protocol_labels)
    found_s = getattr(rlg, "num_labels", None) or 0
    row = {"index": index, "text": ref, "tokens": len(tokens[0][0]),
           "rlg_exact": float(rlg.ok and tuple(rlg.labels) == truth.label_set),
           "rlg_length_error": abs(found_s - len(tokens[0][0]))}  # fmt: skip
    decoder = task.model_spec().decoder
    grads = decoder_gradients(update, args.client_lr, decoder)
    attacked = task.build_model()
    attacked.load_state_dict(state)
    for name in configs:
        use_bow, init, restarts, _, fallback = CONFIGS[name]
        if not rlg.ok or not getattr(rlg, "num_labels", None):
            row[name] = {"exact": 0.0, "wer": 1.0, "hyp": "", "seconds": 0.0, "rlg_failed": 1}
            continue
        start = time.perf_counter()
        options = TranscriptOptions(
            init=init, restarts=restarts, fallback=fallback, steps=args.steps,
            halve_every=args.halve_every, patience=args.patience, device=args.device,
        )  # fmt: skip
        bow = rlg.labels if use_bow else None
        found = reconstruct_transcript(
            attacked, grads, bow, rlg.num_labels, decoder, options, tokenizer=task.tokenizer
        )
        scores = found.score(truth)
        # The bag of words of the reconstruction (Table 2's gradient-matching baseline).
        scores["bow_exact"] = float(set(found.pieces) | {task.tokenizer.eos_id}
                                    == set(truth.label_set))  # fmt: skip
        row[name] = {**scores, "hyp": found.text, "seconds": time.perf_counter() - start,
                     "distance": found.distance, "variables": found.num_variables,
                     "steps": found.steps}  # fmt: skip
    return row


def summarise(rows: list[dict], name: str) -> dict:
    done = [r for r in rows if name in r]
    if not done:
        return {}
    res = [r[name] for r in done]
    refs = [r["text"] for r in done]
    hyps = [x.get("hyp") or "" for x in res]
    return {
        "n": len(done),
        "exact": float(np.mean([x["exact"] for x in res])),
        "wer_mean": float(np.mean([x["wer"] for x in res])),
        "wer_corpus": float(jiwer.wer(refs, hyps)),
        "variables_median": float(statistics.median(x.get("variables", 0) for x in res)),
        "seconds_median": float(statistics.median(x["seconds"] for x in res)),
        "seconds_max": float(max(x["seconds"] for x in res)),
        "rlg_exact": float(np.mean([r["rlg_exact"] for r in done])),
        "bow_exact": float(np.mean([x.get("bow_exact", 0.0) for x in res])),
    }


def run_checkpoint(task, state, indices, args, paper_rows: bool) -> tuple[list[dict], dict]:
    rows = []
    for k, index in enumerate(indices):
        configs = [n for n, c in CONFIGS.items() if not c[3] or (paper_rows and k < args.paper)]
        rows.append(attack_one(task, state, index, configs, args))
        print(json.dumps({n: rows[-1][n].get("exact") for n in configs} | {"k": k}), flush=True)
    return rows, {name: summarise(rows, name) for name in CONFIGS}


def run_figure(task: AsrTask, states: dict, indices: list, args, result: dict) -> None:
    """Figure 2: the checkpoints after `untrained` on the first `--figure-utterances`."""
    for name, state in states.items():
        if name == "untrained":
            continue
        subset = indices[: args.figure_utterances]
        _, s_ck = run_checkpoint(task, state, subset, args, paper_rows=args.figure_paper)
        result["figure2"][name] = s_ck
        print_table(f"Figure 2 analog: checkpoint {name}", s_ck)


def print_table(title: str, summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("method", "n", "#vars", "WER (mean)", "WER (corpus)", "EM", "BoW EM", "median s",
                "paper WER", "paper EM"):  # fmt: skip
        table.add_column(col)
    for name, s in summary.items():
        if not s:
            continue
        paper = PAPER.get(name.removeprefix("paper: "), ("", ""))
        table.add_row(name, str(s["n"]), f"{s['variables_median']:.0f}", f"{s['wer_mean']:.3f}",
                      f"{s['wer_corpus']:.3f}", f"{s['exact']:.3f}", f"{s['bow_exact']:.3f}",
                      f"{s['seconds_median']:.2f}",
                      str(paper[0]), str(paper[1]))  # fmt: skip
    Console(width=150).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few utterances, short budgets")
    parser.add_argument("--model", default="las", choices=["las", "las_whisper"])
    parser.add_argument("--corpus", default=None, help="default: large (las_whisper), default")
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--large-vocab", type=int, default=16000, help="0: skip the 16k rows")
    parser.add_argument("--large-utterances", type=int, default=25)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--paper-utterances", dest="paper", type=int, default=3)
    parser.add_argument("--figure-utterances", type=int, default=40)
    parser.add_argument("--figure-paper", action="store_true", help="paper rows in Figure 2 too")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--halve-every", type=int, default=500)
    parser.add_argument("--patience", type=int, default=1000)
    parser.add_argument("--client-lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--figure-only",
        action="store_true",
        help="rerun only Figure 2's trained checkpoints; merge into the JSON",
    )
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    if args.quick:
        args.utterances, args.paper, args.steps, args.halve_every = 8, 1, 150, 100
        args.figure_paper = True
        args.patience, args.figure_utterances, args.large_utterances = 100, 4, 4
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    task = speech_task(
        args.model, args.corpus, vocab_size=args.vocab_size, cache_dir=args.cache_dir
    )
    args.corpus = task.corpus.info["options"]["size"]
    if args.model != "las":
        args.large_vocab = 0  # las_whisper's vocabulary is its checkpoint's (1k pieces)
    indices = eval_set(task, per_length=100, max_chars=50)
    rng = np.random.default_rng(0)
    indices = sorted(rng.choice(indices, min(args.utterances, len(indices)), replace=False))
    states = load_states(task, args.corpus, args.vocab_size, args.cache_dir, args.model)
    model = "" if args.model == "las" else f"_{args.model}"
    path = OUT / f"transcript{model}{'_quick' if args.quick else ''}.json"
    if args.figure_only:
        if not path.is_file():
            sys.exit(f"--figure-only merges into {path}, which does not exist: run without it")
        result = json.loads(path.read_text())
        result["figure2_args"], result["figure2_load_before"] = vars(args), load
        run_figure(task, states, indices, args, result)
        result["figure2_load_after"] = os.getloadavg()
        path.write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {path}")
        return
    result = {"args": vars(args), "load_before": load, "eval_utterances": len(indices),
              "paper_table5": PAPER, "table5": {}, "figure2": {}}  # fmt: skip
    rows, summary = run_checkpoint(task, states["untrained"], indices, args, paper_rows=True)
    result["table5"][f"v{args.vocab_size}"] = summary
    result["rows_untrained"] = rows
    print_table(f"Table 5 analog: untrained LAS, {task.tokenizer.vocab_size} pieces", summary)
    if args.large_vocab:
        big = AsrTask(corpus=args.corpus, vocab_size=args.large_vocab, cache_dir=args.cache_dir)
        torch.manual_seed(0)
        state = big.build_model().state_dict()
        n_big = max(4, min(args.large_utterances, len(indices)))
        _, s_big = run_checkpoint(big, state, indices[:n_big], args, paper_rows=False)
        result["table5"][f"v{args.large_vocab}"] = s_big
        print_table(f"Table 5 analog: untrained LAS, {big.tokenizer.vocab_size} pieces", s_big)
    result["figure2"]["untrained"] = summary
    run_figure(task, states, indices, args, result)
    result["load_after"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

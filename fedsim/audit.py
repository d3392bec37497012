"""Serialising a client's `Truth` into the reply (simulation only) and back, as npz bytes.

The audit record travels as a bytes value of a `ConfigRecord`, so strategies that expect exactly one
ArrayRecord and one MetricRecord are unaffected; the observer removes it before aggregation.
"""

from __future__ import annotations

import io

import numpy as np

from fedcore import Truth

__all__ = ["decode_truth", "encode_truth"]


def encode_truth(truth: Truth) -> bytes:
    arrays = {"labels": np.asarray(truth.labels)}
    for name in ("soft_labels", "inputs", "features"):
        value = getattr(truth, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    if truth.tokens is not None:  # ragged (step, utterance, token) -> flat ids + lengths
        arrays["tokens_steps"] = np.asarray([len(step) for step in truth.tokens], np.int64)
        lengths = [len(utt) for step in truth.tokens for utt in step]
        arrays["tokens_lengths"] = np.asarray(lengths, np.int64)
        flat = [t for step in truth.tokens for utt in step for t in utt]
        arrays["tokens_flat"] = np.asarray(flat, np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def decode_truth(blob: bytes) -> Truth:
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    tokens = None
    if "tokens_flat" in arrays:
        flat, lengths = arrays["tokens_flat"].tolist(), arrays["tokens_lengths"].tolist()
        utterances, pos = [], 0
        for n in lengths:
            utterances.append(tuple(flat[pos : pos + n]))
            pos += n
        steps, pos = [], 0
        for n in arrays["tokens_steps"].tolist():
            steps.append(tuple(utterances[pos : pos + n]))
            pos += n
        tokens = tuple(steps)
    return Truth(
        labels=arrays["labels"],
        soft_labels=arrays.get("soft_labels"),
        tokens=tokens,
        inputs=arrays.get("inputs"),
        features=arrays.get("features"),
    )

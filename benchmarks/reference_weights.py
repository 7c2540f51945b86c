"""Our parameter tree -> the PyTorch MAD reference's state_dict names and layouts (numpy only).

`to_reference(params, layers, backbone=, norm=)` returns {reference name: array in the reference's
layout} for every parameter of a `mad_jax.models.build` model, so the same numbers can be loaded
into the reference's `LanguageModel` / `AutoEncoder` (athms/mad-lab) built from the same layers.
Layout rules: a flax Dense kernel [in, out] is a torch Linear weight [out, in] (transposed); our
depthwise short-conv kernel [K, C] is a torch Conv1d weight [C, 1, K] (tap K-1 is the current
token in both); attention's three [D, H, Dh] kernels are the reference's fused Wqkv rows q, k, v.
Every parameter must be consumed exactly once: an unmapped one raises, so a renamed or added
parameter cannot be silently left at the reference's own init.

`REFERENCE_OWN` names the reference tensors that have no counterpart among our parameters, each
with the reason; the caller keeps the reference's own values for them (and must check nothing
else is left).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

# reference tensor-name suffix -> why it is not copied from our parameters
REFERENCE_OWN = {
    "long_conv.filter.pos_emb.t": "buffer: the filter's normalised time t / (max_length - 1)",
    "long_conv.filter.modulation.deltas": "buffer: the fixed decay rates of the modulation",
}


class UnmappedParameterError(ValueError):
    """A parameter of ours has no place in the reference model (or the reverse)."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": numpy array}."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = np.asarray(getattr(value, "value", value))
    return flat


class _Params:
    """Our flat parameters under one prefix: `take` hands each out once, `check_empty` checks
    that none is left."""

    def __init__(self, flat: dict[str, np.ndarray], prefix: str):
        self.prefix = prefix
        self._left = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}

    def take(self, path: str) -> np.ndarray:
        if path not in self._left:
            raise UnmappedParameterError(
                f"expected parameter {self.prefix}{path}, have {sorted(self._left)}; update "
                "benchmarks/reference_weights.py to the layer's parameter names")
        return self._left.pop(path)

    def has(self, path: str) -> bool:
        return path in self._left

    def check_empty(self) -> None:
        if self._left:
            raise UnmappedParameterError(
                f"parameters with no reference counterpart: "
                f"{sorted(self.prefix + k for k in self._left)}; map them in "
                "benchmarks/reference_weights.py")


def _linear(p: _Params, ours: str, ref: str, out: dict, bias: bool = True) -> None:
    """flax Dense ours/{kernel [in, out], bias} -> torch Linear ref.{weight [out, in], bias}."""
    out[f"{ref}.weight"] = p.take(f"{ours}/kernel").T
    if bias:
        out[f"{ref}.bias"] = p.take(f"{ours}/bias")


def _depthwise_conv(p: _Params, ours: str, ref: str, out: dict) -> None:
    """ShortConv ours/{kernel [K, C], bias [C]} -> torch Conv1d ref.{weight [C, 1, K], bias}."""
    out[f"{ref}.weight"] = p.take(f"{ours}/kernel").T[:, None, :]
    out[f"{ref}.bias"] = p.take(f"{ours}/bias")


def _attention(p: _Params, out: dict) -> None:
    """MultiHeadAttention -> flash-attn's MHA: Wqkv [3D, D] (rows q, k, v, each ordered (head,
    dh)) and out_proj."""
    kernels, biases = [], []
    for name in ("query", "key", "value"):
        kernel_DxHxK = p.take(f"{name}/kernel")
        kernels.append(kernel_DxHxK.reshape(kernel_DxHxK.shape[0], -1).T)
        biases.append(p.take(f"{name}/bias").reshape(-1))
    out["Wqkv.weight"] = np.concatenate(kernels, axis=0)
    out["Wqkv.bias"] = np.concatenate(biases, axis=0)
    kernel_HxKxD = p.take("out/kernel")
    out["out_proj.weight"] = kernel_HxKxD.reshape(-1, kernel_HxKxD.shape[-1]).T
    out["out_proj.bias"] = p.take("out/bias")


def _swiglu(p: _Params, out: dict) -> None:
    for name in ("w1", "w2", "w3"):
        _linear(p, name, name, out, bias=False)


def _mlp(p: _Params, out: dict) -> None:
    for name in ("fc", "proj"):
        _linear(p, name, name, out, bias=p.has(f"{name}/bias"))


def _hyena(p: _Params, out: dict) -> None:
    """Hyena -> HyenaOperator; the filter's positional embedding z is pos_emb.z; its Sequential is
    Linear, Sin, (Linear, Sin) x num_inner, Linear(no bias), with ONE Sin module (its `freq` appears
    under every Sin index of the state_dict)."""
    _linear(p, "in_proj", "in_proj", out)
    _depthwise_conv(p, "short_filter", "short_filter", out)
    out["long_conv.bias"] = p.take("bias")
    out["long_conv.filter.pos_emb.z"] = p.take("filter/z")[None]  # [N, E] -> [1, N, E]
    f = "long_conv.filter.implicit_filter"
    _linear(p, "filter/in", f"{f}.0", out)
    num_inner = 0
    while p.has(f"filter/hidden_{num_inner}/kernel"):
        _linear(p, f"filter/hidden_{num_inner}", f"{f}.{2 + 2 * num_inner}", out)
        num_inner += 1
    _linear(p, "filter/out", f"{f}.{2 + 2 * num_inner}", out, bias=False)
    freq_1xW = p.take("filter/sin_freq")[None, :]
    for i in range(num_inner + 1):
        out[f"{f}.{1 + 2 * i}.freq"] = freq_1xW
    _linear(p, "out_proj", "out_proj", out)


def _mamba(p: _Params, out: dict) -> None:
    _linear(p, "in_proj", "in_proj", out, bias=p.has("in_proj/bias"))
    _depthwise_conv(p, "conv1d", "conv1d", out)
    _linear(p, "x_proj", "x_proj", out, bias=False)
    _linear(p, "dt_proj", "dt_proj", out)
    out["A_log"] = p.take("A_log")
    out["D"] = p.take("D")
    _linear(p, "out_proj", "out_proj", out, bias=p.has("out_proj/bias"))


LAYER_MAPPERS: dict[str, Callable[[_Params, dict], None]] = {
    "attention": _attention, "mh-attention": _attention, "swiglu": _swiglu, "mlp": _mlp,
    "hyena": _hyena, "mamba": _mamba,
}


def _norm(p: _Params, ours: str, ref: str, norm: str, out: dict) -> None:
    """flax RMSNorm {scale} / LayerNorm {scale, bias} -> torch {weight} / {weight, bias}."""
    out[f"{ref}.weight"] = p.take(f"{ours}/scale")
    if norm == "layernorm":
        out[f"{ref}.bias"] = p.take(f"{ours}/bias")


def to_reference(params: Mapping[str, Any], layers: Sequence[str], *,
                 backbone: str = "language-model", norm: str = "rmsnorm") -> dict[str, np.ndarray]:
    """Our parameters (the "params" collection of a `build(layers, ...)` model) -> {reference
    state_dict name: float array in the reference's layout}. Raises UnmappedParameterError when a
    parameter of ours is left over or expected and missing."""
    flat = flatten(params)
    out: dict[str, np.ndarray] = {}
    stack = "model" if backbone == "language-model" else "encoder"
    # The backbone's parameters; each block's mixer is handed out separately below.
    top = _Params({k: v for k, v in flat.items() if "/mixer/" not in k}, "")
    top_out: dict[str, np.ndarray] = {}
    top_out["token_embeds.weight"] = top.take("encoder/embed/tokens/embedding")
    for i, name in enumerate(layers):
        if name not in LAYER_MAPPERS:
            raise UnmappedParameterError(
                f"no reference mapping for layer {name!r} (have {sorted(LAYER_MAPPERS)}); add one "
                "to benchmarks/reference_weights.py")
        _norm(top, f"encoder/block_{i}/norm", f"{stack}.{i}.0", norm, top_out)
        mixer = _Params(flat, f"encoder/block_{i}/mixer/")
        mixer_out: dict[str, np.ndarray] = {}
        LAYER_MAPPERS[name](mixer, mixer_out)
        mixer.check_empty()
        out.update({f"{stack}.{i}.1.{k}": v for k, v in mixer_out.items()})
    if backbone == "autoencoder":
        # Decoder: Sequential(norm, Linear, GELU, norm, Linear, GELU).
        for j, (norm_index, dense_index) in enumerate(((0, 1), (3, 4))):
            _norm(top, f"decoder/norm_{j}", f"decoder.{norm_index}", norm, top_out)
            _linear(top, f"decoder/dense_{j}", f"decoder.{dense_index}", top_out)
    _norm(top, "unembed/norm", "unembed.0", norm, top_out)
    _linear(top, "unembed/proj", "unembed.1", top_out)
    top.check_empty()
    out.update(top_out)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def reference_own(name: str) -> str | None:
    """Why the reference tensor `name` keeps its own value, or None if it must come from us."""
    for suffix, why in REFERENCE_OWN.items():
        if name.endswith(suffix):
            return why
    return None

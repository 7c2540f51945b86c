"""The RWKV-7 "Goose" time mixer (Peng et al. 2025, arXiv 2503.14456): the generalised delta rule
with a vector-valued decay and a vector-valued in-context learning rate.

On x [B, L, D], H = D / K heads of size K (`head_dim`), x'_t = x_{t-1} (token shift, 0 at t = 0):
    x_*,t   = x_t + (x'_t - x_t) * mu_*                      for * in r, w, k, v, a, g
    r_t     = x_r W_r,   k_t = x_k W_k,   v_t = x_v W_v
    w_t     = exp(-exp(-1/2) sigmoid(w0 + tanh(x_w W1) W2))   in (0.545, 1)^D: the decay
    a_t     = sigmoid(a0 + (x_a A1) A2)                        in (0, 1)^D: in-context learning rate
    g_t     = sigmoid(x_g G1) G2                               the output gate
    kappa_hat_t = normalize_head(k_t * xi)                     the removal key (xi = `k_k`)
    k~_t    = k_t * (1 + (a_t - 1) * alpha)                    the replacement key (alpha = `k_a`)
    S_t     = S_{t-1} (diag(w_t) - kappa_hat_t^T (a_t * kappa_hat_t)) + v_t^T k~_t   (per head)
    o_t     = GroupNorm_head(S_t r_t) + (sum_K r_t * k~_t * rho) v_t           (rho = `r_k`, bonus)
    y_t     = (o_t * g_t) W_o
The state update is `mad_jax.ops.generalized_delta_rule` in its [K, V] layout (the transpose of
the paper's [V, K]): transition diag(w_t) + a b^T with a = -(a_t * kappa_hat_t), b = kappa_hat_t,
key k~_t, value v_t, query r_t. It runs as a lax.scan recurrence over time (no chunked form yet).

Initialisation: the paper's for layer 0 of 1 (as `rwkv.py` takes layer_id = 0, n_layer = 1):
mu_r, mu_g = 1 - (i/D)^0.2, mu_w, mu_a = 1 - (i/D)^0.9, mu_k, mu_v = 1 - (i/D)^0.7;
w0 = -6 + 6 i/(D-1) + 0.5 + 2.5 z_i and a0 = -0.19 + 0.3 z_i + 0.4 (i/(D-1) - 1/2) with z the
per-head signed-square zigzag; xi = 0.71 - 0.1 (i/(D-1) - 1/2), alpha = 1.02, rho = -0.04; the
LoRA down maps W1, A1, G1 zero and the up maps orthogonal with gain 0.1 (times sqrt(R/D) where
R > D); GroupNorm weight 1, bias 0.
Choices where MAD differs from the paper: r/k/v/output maps start from PyTorch's Linear default, as
every MAD layer (the paper zeroes W_o, which in one isolated layer makes its output and its input
gradient vanish at init); the LoRA factors and the special vectors are not Linear weights, so the
autoencoder backbone keeps their init. The value residual (v lerped towards the first layer's v
through a v-LoRA) needs the first layer's values, which a MAD layer does not see; every layer here
acts as the paper's layer 0, where it is the identity (v_first = v), so there is no v-LoRA.

Defaults at width 128: heads of 16 (8 heads), for equal state with `rwkv5/6-time-mixer` and
`mh-gated-linear-attention`: H K^2 + D = 2048 + 128 = 2176 numbers (K^2 per head, not K^2 per
channel); LoRA ranks from the paper's rule max(32, round(c sqrt(D) K/64 / 32) * 32) at D = 128:
32 for the decay and the learning rate (c = 2.5), 64 for the gate (c = 5, without the K/64 factor).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.deltanet import l2_normalize
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import torch_linear_init
from mad_jax.layers.registry import register_layer
from mad_jax.layers.rwkv import token_shift

_F32 = jnp.float32
_MAX_LOG_DECAY = float(np.exp(-0.5))  # -log w_t lies in (0, exp(-1/2))
_LERPS = ("r", "w", "k", "v", "a", "g")
_LERP_POWER = {"r": 0.2, "w": 0.9, "k": 0.7, "v": 0.7, "a": 0.9, "g": 0.2}


def _const(values: np.ndarray):
    """An initializer returning `values` (reshaped to the requested shape), ignoring the key."""
    def init(key, shape, dtype=_F32):
        del key
        return jnp.asarray(values, dtype).reshape(shape)
    return init


def _ramps(dim: int, head_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i / D, i / (D-1) - 1/2, the per-head zigzag z * |z| with z from -1 to 1 inside a head)."""
    n = np.arange(dim, dtype=np.float64)
    half = max((head_dim - 1) / 2, 1e-9)
    zigzag = ((n % head_dim) - (head_dim - 1) / 2) / half
    return n / dim, n / max(dim - 1, 1) - 0.5, zigzag * np.abs(zigzag)


def _group_norm_heads(o_BxLxHxK, scale_HxK, bias_HxK, eps):
    """GroupNorm with one group per head, in float32, with a per-channel affine map."""
    o = o_BxLxHxK.astype(_F32)
    mean = jnp.mean(o, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
    return (o - mean) * jax.lax.rsqrt(var + eps) * scale_HxK.astype(_F32) + bias_HxK.astype(_F32)


class RWKV7TimeMixer(nn.Module):
    """RWKV-7 time mixer (see the module docstring).

    Fields: head_dim K (16), decay_lora_rank (32), a_lora_rank (32), gate_lora_rank (64),
    norm_eps (GroupNorm epsilon; 64e-5 = 1e-5 * 8^2, as RWKV-7's code sets it). The state update
    runs through `mad_jax.ops.generalized_delta_rule` (a lax.scan; no kernel yet). The per-step
    log decay log w_t [B, L, H, K] and the learning rate a_t [B, L, H, K] are sown under
    "intermediates".
    """

    head_dim: int = 16
    decay_lora_rank: int = 32
    a_lora_rank: int = 32
    gate_lora_rank: int = 64
    norm_eps: float = 64e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _heads(self, dim: int) -> int:
        if dim % self.head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {self.head_dim}")
        return dim // self.head_dim

    def _param(self, name, init, shape, axes):
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    def _lora(self, name, x_BxLxD, rank, activation, dtype):
        """activation(x W_down) W_up: W_down [D, R] zero, W_up [R, D] orthogonal with gain
        0.1 (times sqrt(R / D) when R > D, as RWKV-7's code sizes its LoRA)."""
        dim = x_BxLxD.shape[-1]
        down_DxR = self._param(f"{name}_lora_down", nn.initializers.zeros, (dim, rank),
                               ("embed", None))
        gain = 0.1 * max(1.0, (rank / dim) ** 0.5)
        up_RxD = self._param(f"{name}_lora_up", nn.initializers.orthogonal(scale=gain),
                             (rank, dim), (None, "embed"))
        low_BxLxR = activation(jnp.einsum("bld,dr->blr", x_BxLxD.astype(dtype),
                                          down_DxR.astype(dtype)))
        return jnp.einsum("blr,rd->bld", low_BxLxR, up_RxD.astype(dtype))

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        heads, dk = self._heads(dim), self.head_dim
        ddd, linear, zigzag = _ramps(dim, dk)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        delta_BxLxD = token_shift(x_BxLxD) - x_BxLxD
        mixed = {}
        for name in _LERPS:
            mu_D = self._param(f"mu_{name}", _const(1.0 - ddd ** _LERP_POWER[name]), (dim,),
                               ("embed",)).astype(self.dtype)
            mixed[name] = x_BxLxD + delta_BxLxD * mu_D

        def project(name, x):
            w_DxD = self._param(name, torch_linear_init(), (dim, dim), ("embed", "mlp"))
            return jnp.einsum("bld,de->ble", x, w_DxD.astype(self.dtype))

        r_BxLxD = project("receptance", mixed["r"])
        k_BxLxD = project("key", mixed["k"])
        v_BxLxD = project("value", mixed["v"])

        # Decay and learning rate in float32 (exp, sigmoid of sums with O(1) biases).
        w0_D = self._param("decay", _const(-6.0 + 6.0 * (linear + 0.5) + 0.5 + 2.5 * zigzag),
                           (dim,), ("embed",)).astype(_F32)
        a0_D = self._param("a_bias", _const(-0.19 + 0.3 * zigzag + 0.4 * linear), (dim,),
                           ("embed",)).astype(_F32)
        decay_BxLxD = self._lora("decay", mixed["w"], self.decay_lora_rank, jnp.tanh, self.dtype)
        log_w_BxLxD = -_MAX_LOG_DECAY * jax.nn.sigmoid(w0_D + decay_BxLxD.astype(_F32))
        a_BxLxD = jax.nn.sigmoid(
            a0_D + self._lora("a", mixed["a"], self.a_lora_rank, lambda z: z, self.dtype)
            .astype(_F32))
        g_BxLxD = self._lora("gate", mixed["g"], self.gate_lora_rank, jax.nn.sigmoid, self.dtype)

        xi_D = self._param("k_k", _const(0.71 - 0.1 * linear), (dim,), ("embed",)).astype(_F32)
        alpha_D = self._param("k_a", nn.initializers.constant(1.02), (dim,),
                              ("embed",)).astype(_F32)
        rho_HxK = self._param("r_k", nn.initializers.constant(-0.04), (heads, dk),
                              ("heads", "kv")).astype(_F32)

        def split(a):  # [B, L, D] -> [B, L, H, K] float32
            return a.astype(_F32).reshape(batch, seq_len, heads, dk)

        r, k, v, a, log_w = map(split, (r_BxLxD, k_BxLxD, v_BxLxD, a_BxLxD, log_w_BxLxD))
        kappa_hat_BxLxHxK = l2_normalize(k * xi_D.reshape(heads, dk))
        k_BxLxHxK = k * (1.0 + (a - 1.0) * alpha_D.reshape(heads, dk))
        self.sow("intermediates", "log_decay", log_w)
        self.sow("intermediates", "learning_rate", a)

        o_BxHxLxK = ops.generalized_delta_rule(
            heads_first(r), heads_first(k_BxLxHxK), heads_first(v),
            heads_first(-a * kappa_hat_BxLxHxK), heads_first(kappa_hat_BxLxHxK),
            log_decay_BxHxLxK=heads_first(log_w))
        o_BxLxHxK = from_heads_first(o_BxHxLxK)

        scale_HxK = self._param("norm_scale", nn.initializers.ones, (heads, dk), ("heads", "kv"))
        bias_HxK = self._param("norm_bias", nn.initializers.zeros, (heads, dk), ("heads", "kv"))
        o_BxLxHxK = _group_norm_heads(o_BxLxHxK, scale_HxK, bias_HxK, self.norm_eps)
        bonus_BxLxHx1 = jnp.sum(r * k_BxLxHxK * rho_HxK, axis=-1, keepdims=True)
        o_BxLxD = (o_BxLxHxK + bonus_BxLxHx1 * v).reshape(batch, seq_len, dim).astype(self.dtype)
        w_out_DxD = self._param("output", torch_linear_init(), (dim, dim), ("mlp", "embed"))
        return jnp.einsum("ble,ed->bld", o_BxLxD * g_BxLxD, w_out_DxD.astype(self.dtype))

    def flops(self, dim: int, seq_len: int) -> int:
        """Forward FLOPs per sequence (H heads of K, D = H K; R_w, R_a, R_g the LoRA ranks):
        token-shift difference (1 per element) and six lerps (2 per element); r/k/v/output maps
        2*L*D*D each; the decay LoRA 2*L*D*R_w + tanh (L*R_w) + 2*L*R_w*D, then w0, sigmoid and
        scale (3 per element); the learning-rate LoRA 2*L*D*R_a + 2*L*R_a*D, a0 and sigmoid
        (2 per element); the gate LoRA 2*L*D*R_g + sigmoid (L*R_g) + 2*L*R_g*D;
        kappa_hat (k * xi, L2 norm: 4 per element), k~ (3 per element), a = -(a * kappa_hat)
        (1 per element); the recurrence per step and head: b^T S 2*K*K, the decay K*K,
        the rank-one term 2*K*K, the write k v^T 2*K*K, the readout 2*K*K; GroupNorm (3 per
        element); the bonus (r k rho summed: 3 per element; times v and added: 2 per element);
        the output gate (1 per element)."""
        heads, dk = self._heads(dim), self.head_dim
        rw, ra, rg = self.decay_lora_rank, self.a_lora_rank, self.gate_lora_rank
        shift = (1 + 2 * len(_LERPS)) * seq_len * dim
        maps = 4 * dense_flops(seq_len, dim, dim)
        decay = (dense_flops(seq_len, dim, rw) + seq_len * rw + dense_flops(seq_len, rw, dim)
                 + 3 * seq_len * dim)
        rate = dense_flops(seq_len, dim, ra) + dense_flops(seq_len, ra, dim) + 2 * seq_len * dim
        gate = dense_flops(seq_len, dim, rg) + seq_len * rg + dense_flops(seq_len, rg, dim)
        keys = (4 + 3 + 1) * seq_len * dim
        recurrence = seq_len * heads * 9 * dk * dk
        readout = (3 + 3 + 2 + 1) * seq_len * dim
        return int(shift + maps + decay + rate + gate + keys + recurrence + readout)

    def state_size(self, dim: int, seq_len: int) -> int:
        """H * K * K (the per-head [K, K] state; K^2 per head, not per channel) + D (the
        token-shift vector x_{t-1}). Default at D=128: 8 * 256 + 128 = 2176."""
        return int(self._heads(dim) * self.head_dim * self.head_dim + dim)


register_layer("rwkv7-time-mixer", RWKV7TimeMixer,
               {"head_dim": 16, "decay_lora_rank": 32, "a_lora_rank": 32, "gate_lora_rank": 64})

"""RWKV-5 (Eagle) and RWKV-6 (Finch) time mixers and the RWKV channel mixer (Peng et al. 2024).

Follows the MAD reference (athms/mad-lab `layers/rwkv/rwkv{5,6}.py`, adapted from BlinkDL/RWKV-LM)
with the initialisation it uses in MAD: a single layer (`layer_id=0, n_layer=1`), PyTorch-default
linear weights, GroupNorm weight 1 and bias 0. Heads have size K = `head_dim`; H = D / K.

Time mixer, per head (r, k, v: [K]; state S: [K, K]; w_t in (0, 1)^K; bonus u: [K]):
    o_t = r_t (S_{t-1} + diag(u) k_t^T v_t),     S_t = diag(w_t) S_{t-1} + k_t^T v_t
computed by `mad_jax.ops.linear_attention`, then GroupNorm per head, times silu(g_t), output map.
  * RWKV-5: r, k, v, g read lerp(x_{t-1}, x_t) with learned per-channel coefficients, and the decay
    w = exp(-exp(w0)) is a per-head, per-channel parameter (data-independent).
  * RWKV-6: the lerp coefficients get a data-dependent low-rank correction (ddlerp), and the decay
    is data-dependent, w_t = exp(-exp(w0 + tanh(x_w,t A) B)) with a rank-64 LoRA.
Channel mixer: k = relu(W_k x_k)^2, r = sigmoid(W_r x_r), out = r * W_v k, with x_k and x_r
token-shift lerps.

The reference's GroupNorm of `x / head_size_divisor` (8) with eps 1e-5 (RWKV-5), and of `x` with eps
1e-5 * 8**2 (RWKV-6), are the same function; both are `norm_eps = 64e-5` here.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mad_jax import ops
from mad_jax.layers.accounting import dense_flops
from mad_jax.layers.heads import from_heads_first, heads_first
from mad_jax.layers.initializers import torch_dense, torch_linear_init
from mad_jax.layers.registry import register_layer

_F32 = jnp.float32
_NUM_DDLERP = 5  # RWKV-6 data-dependent lerps, in the reference's order: w, k, v, r, g


def token_shift(x_BxLxD: jnp.ndarray) -> jnp.ndarray:
    """x_{t-1} at every position t, zeros at t = 0 (the reference's `ZeroPad2d((0, 0, 1, -1))`)."""
    return jnp.pad(x_BxLxD, ((0, 0), (1, 0), (0, 0)))[:, :-1]


# ---- initialisers of the reference (layer_id = 0, n_layer = 1) ----

def _channel_ramp(dim: int) -> np.ndarray:
    """ddd in the reference: i / D for channel i."""
    return np.arange(dim, dtype=np.float32) / dim


def _const_init(values_fn):
    """An initializer that ignores the key and returns values_fn(shape) (numpy) in `dtype`."""
    def init(key, shape, dtype=_F32):
        del key
        return jnp.asarray(values_fn(shape), dtype).reshape(shape)
    return init


def _decay_speed(shape) -> np.ndarray:
    """w0[n] = -6 + 5 (n / (C - 1))^0.7 over the C = H*K channels (the reference's `time_decay`)."""
    n_chan = int(np.prod(shape))
    return -6.0 + 5.0 * (np.arange(n_chan) / max(n_chan - 1, 1)) ** 0.7


def _bonus_zigzag(shape) -> np.ndarray:
    """u[n] = ((n + 1) % 3 - 1) * 0.1 (reference `time_faaaa` at ratio_0_to_1 = 0)."""
    n = np.arange(int(np.prod(shape)))
    return ((n + 1) % 3 - 1) * 0.1


def _small_uniform(key, shape, dtype=_F32):
    """U(-1e-4, 1e-4): the reference's init of the RWKV-6 LoRA matrices."""
    return jax.random.uniform(key, shape, dtype, -1e-4, 1e-4)


def _group_norm_heads(o_BxLxHxK, scale_HxK, bias_HxK, eps):
    """GroupNorm with one group per head, in float32, with a per-channel affine map."""
    o = o_BxLxHxK.astype(_F32)
    mean = jnp.mean(o, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(o - mean), axis=-1, keepdims=True)
    return (o - mean) * jax.lax.rsqrt(var + eps) * scale_HxK.astype(_F32) + bias_HxK.astype(_F32)


def _wkv_flops(seq_len: int, heads: int, head_dim: int) -> int:
    """Recurrence FLOPs per token and head: state decay, outer product and add (3*K*K), read-out
    r S_{t-1} (2*K*K), bonus (r * u * k) . 1 (3*K) times v, added (2*K)."""
    return seq_len * heads * (5 * head_dim * head_dim + 5 * head_dim)


class _TimeMixerBase(nn.Module):
    """Shared parts of the RWKV-5/6 time mixers: projections, recurrence, norm, gate, output."""

    head_dim: int = 16
    norm_eps: float = 64e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _heads(self, dim: int) -> int:
        if dim % self.head_dim:
            raise ValueError(f"width {dim} is not a multiple of head_dim {self.head_dim}")
        return dim // self.head_dim

    def _param(self, name, init, shape, axes):
        return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    def _project(self, name: str, x_BxLxD: jnp.ndarray, heads: int) -> jnp.ndarray:
        """A bias-free D -> (H, K) map with the PyTorch init (fan_in D)."""
        dim = x_BxLxD.shape[-1]
        w_DxHxK = self._param(name, torch_linear_init(in_axis=0, out_axis=(1, 2)),
                              (dim, heads, self.head_dim), ("embed", "heads", "kv"))
        return jnp.einsum("bld,dhk->blhk", x_BxLxD, w_DxHxK.astype(self.dtype))

    def _mix(self, x_BxLxD, r_BxLxHxK, k_BxLxHxK, v_BxLxHxK, g_BxLxHxK, log_decay_BxLxHxK):
        """wkv recurrence, per-head GroupNorm, gate and output map; returns [B, L, D]."""
        dim = x_BxLxD.shape[-1]
        heads = r_BxLxHxK.shape[2]
        bonus_HxK = self._param("bonus", _const_init(_bonus_zigzag), (heads, self.head_dim),
                                ("heads", "kv"))
        self.sow("intermediates", "log_decay", log_decay_BxLxHxK)

        o_BxHxLxK = ops.linear_attention(
            heads_first(r_BxLxHxK, _F32), heads_first(k_BxLxHxK, _F32),
            heads_first(v_BxLxHxK, _F32), log_decay_BxHxLxK=heads_first(log_decay_BxLxHxK, _F32),
            bonus_HxK=bonus_HxK.astype(_F32))
        o_BxLxHxK = from_heads_first(o_BxHxLxK)

        scale_HxK = self._param("norm_scale", nn.initializers.ones, (heads, self.head_dim),
                                ("heads", "kv"))
        bias_HxK = self._param("norm_bias", nn.initializers.zeros, (heads, self.head_dim),
                               ("heads", "kv"))
        o_BxLxHxK = _group_norm_heads(o_BxLxHxK, scale_HxK, bias_HxK, self.norm_eps)
        o_BxLxHxK = o_BxLxHxK.astype(self.dtype)
        w_out_HxKxD = self._param("output", torch_linear_init(in_axis=(0, 1), out_axis=2),
                                  (heads, self.head_dim, dim), ("heads", "kv", "embed"))
        return jnp.einsum("blhk,hkd->bld", o_BxLxHxK * g_BxLxHxK, w_out_HxKxD.astype(self.dtype))

    def _common_flops(self, dim: int, seq_len: int) -> int:
        """Five D x D maps (r, k, v, g, output), the recurrence, GroupNorm, SiLU and gate
        (1 per element each)."""
        heads = self._heads(dim)
        return (5 * dense_flops(seq_len, dim, dim) + _wkv_flops(seq_len, heads, self.head_dim)
                + 3 * seq_len * dim)

    def state_size(self, dim: int, seq_len: int) -> int:
        """H * K * K (the per-head [K, K] wkv state) + D (the token-shift vector x_{t-1})."""
        return int(self._heads(dim) * self.head_dim * self.head_dim + dim)


class RWKV5TimeMixer(_TimeMixerBase):
    """RWKV-5 (Eagle) time mixer: static token-shift lerps, data-independent per-channel decay.

    head_dim: K, the head size (16 in MAD); norm_eps: GroupNorm epsilon (see the module docstring).
    The per-position log decay [B, L, H, K] is sown under ("intermediates", "log_decay").
    """

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        batch, seq_len, dim = x_BxLxD.shape
        heads = self._heads(dim)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        prev_BxLxD = token_shift(x_BxLxD)
        ramp = _channel_ramp(dim)

        def lerp(name, mix_fn):  # weight mix_D on the current token, 1 - mix_D on the previous one
            mix_D = self._param(name, _const_init(lambda shape: mix_fn(ramp)), (dim,), ("embed",))
            mix_D = mix_D.astype(self.dtype)
            return x_BxLxD * mix_D + prev_BxLxD * (1 - mix_D)

        x_k = lerp("mix_k", lambda d: d)
        x_v = lerp("mix_v", lambda d: d)
        x_r = lerp("mix_r", np.sqrt)
        x_g = lerp("mix_g", np.sqrt)
        r = self._project("receptance", x_r, heads)
        k = self._project("key", x_k, heads)
        v = self._project("value", x_v, heads)
        g = jax.nn.silu(self._project("gate", x_g, heads))

        w0_HxK = self._param("decay", _const_init(_decay_speed), (heads, self.head_dim),
                             ("heads", "kv"))
        log_decay_HxK = -jnp.exp(w0_HxK.astype(_F32))
        log_decay_BxLxHxK = jnp.broadcast_to(log_decay_HxK, (batch, seq_len, heads, self.head_dim))
        return self._mix(x_BxLxD, r, k, v, g, log_decay_BxLxHxK)

    def flops(self, dim: int, seq_len: int) -> int:
        """Four token-shift lerps (3 per element), the r/k/v/g/output maps 2*L*D*D each, the wkv
        recurrence (`_wkv_flops`), GroupNorm, SiLU and gate (1 per element each). The static decay
        exp(-exp(w0)) is computed once per call and not counted."""
        return int(4 * 3 * seq_len * dim + self._common_flops(dim, seq_len))


class RWKV6TimeMixer(_TimeMixerBase):
    """RWKV-6 (Finch) time mixer: data-dependent token shift (ddlerp) and data-dependent decay.

    x'_t = x_t + (x_{t-1} - x_t) * mu_x
    m_{*,t} = tanh(x'_t A) B_*                       (rank `mix_lora_rank`, for * in w, k, v, r, g)
    x_{*,t} = x_t + (x_{t-1} - x_t) * (mu_* + m_{*,t})
    log w_t = -exp(w0 + tanh(x_{w,t} C) E)            (rank `decay_lora_rank`)
    Ranks 32 and 64 and the U(-1e-4, 1e-4) init of A, B, C, E are the reference's. The per-position
    log decay [B, L, H, K] is sown under ("intermediates", "log_decay").
    """

    mix_lora_rank: int = 32
    decay_lora_rank: int = 64

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        heads = self._heads(dim)
        # The lerps run in float32 (the LoRA maps in the compute dtype): the corrections m start
        # near 1e-6 and would vanish in a bf16 sum mu + m (ulp 2^-9 at 0.5). Under the
        # reference's autocast the float32 parameter mu promotes that sum to float32 too.
        x_BxLxD = x_BxLxD.astype(_F32)
        delta_BxLxD = token_shift(x_BxLxD) - x_BxLxD
        ramp = _channel_ramp(dim)

        def maa(name, mix_fn):  # weight on the previous token (the reference's `time_maa_*`)
            return self._param(name, _const_init(lambda shape: 1.0 - mix_fn(ramp)), (dim,),
                               ("embed",)).astype(_F32)

        mu_x = maa("maa_x", lambda d: d)
        mus = [maa("maa_w", lambda d: d), maa("maa_k", lambda d: d), maa("maa_v", lambda d: d),
               maa("maa_r", np.sqrt), maa("maa_g", np.sqrt)]
        a_DxFxR = self._param("maa_lora_a", _small_uniform, (dim, _NUM_DDLERP, self.mix_lora_rank),
                              ("embed", None, None))
        b_FxRxD = self._param("maa_lora_b", _small_uniform, (_NUM_DDLERP, self.mix_lora_rank, dim),
                              (None, None, "embed"))
        x_mix = (x_BxLxD + delta_BxLxD * mu_x).astype(self.dtype)
        low_BxLxFxR = jnp.tanh(jnp.einsum("bld,dfr->blfr", x_mix, a_DxFxR.astype(self.dtype)))
        m_FxBxLxD = jnp.einsum("blfr,frd->fbld", low_BxLxFxR,
                               b_FxRxD.astype(self.dtype)).astype(_F32)
        x_w, x_k, x_v, x_r, x_g = ((x_BxLxD + delta_BxLxD * (mu + m_FxBxLxD[i])).astype(self.dtype)
                                   for i, mu in enumerate(mus))

        r = self._project("receptance", x_r, heads)
        k = self._project("key", x_k, heads)
        v = self._project("value", x_v, heads)
        g = jax.nn.silu(self._project("gate", x_g, heads))

        # Data-dependent decay, in float32.
        rank = self.decay_lora_rank
        w0_HxK = self._param("decay", _const_init(_decay_speed), (heads, self.head_dim),
                             ("heads", "kv"))
        c_DxR = self._param("decay_lora_a", _small_uniform, (dim, rank), ("embed", None))
        e_RxHxK = self._param("decay_lora_b", _small_uniform, (rank, heads, self.head_dim),
                              (None, "heads", "kv"))
        low_BxLxR = jnp.tanh(jnp.einsum("bld,dr->blr", x_w.astype(_F32), c_DxR.astype(_F32)))
        w_BxLxHxK = w0_HxK.astype(_F32) + jnp.einsum("blr,rhk->blhk", low_BxLxR,
                                                     e_RxHxK.astype(_F32))
        return self._mix(x_BxLxD, r, k, v, g, -jnp.exp(w_BxLxHxK))

    def flops(self, dim: int, seq_len: int) -> int:
        """Token shift difference (1 per element), six ddlerps (2 per element) plus adding the five
        LoRA corrections (1 each); the mix LoRA (2*L*D*5R, tanh, five 2*L*R*D maps); the decay LoRA
        (2*L*D*R', tanh, 2*L*R'*D), adding w0 and exp(-exp) (3 per element); then as RWKV-5."""
        n_mix, rank, d_rank = _NUM_DDLERP, self.mix_lora_rank, self.decay_lora_rank
        shift = (1 + 2 * (n_mix + 1) + n_mix) * seq_len * dim
        mix_lora = (dense_flops(seq_len, dim, n_mix * rank) + seq_len * n_mix * rank
                    + n_mix * dense_flops(seq_len, rank, dim))
        decay_lora = (dense_flops(seq_len, dim, d_rank) + seq_len * d_rank
                      + dense_flops(seq_len, d_rank, dim) + 3 * seq_len * dim)
        return int(shift + mix_lora + decay_lora + self._common_flops(dim, seq_len))


class RWKVChannelMixer(nn.Module):
    """RWKV channel mixer: out_t = sigmoid(W_r x_r,t) * W_v relu(W_k x_k,t)^2.

    x_k, x_r = lerp(x_{t-1}, x_t) with learned per-channel weights on the current token, initialised
    to i / D (the reference at layer 0). RWKV-5 writes the lerp as x*mix + x_{t-1}*(1-mix) and
    RWKV-6 as x + (x_{t-1}-x)*maa with maa = 1 - mix: the same function and the same init, so one
    module serves both `rwkv5-channel-mixer` and `rwkv6-channel-mixer`.
    hidden_dim: width of k; None means 4 * D (512 at width 128, the reference's `dim_inner: 512`).
    """

    hidden_dim: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def inner_dim(self, dim: int) -> int:
        return 4 * dim if self.hidden_dim is None else self.hidden_dim

    @nn.compact
    def __call__(self, x_BxLxD: jnp.ndarray) -> jnp.ndarray:
        dim = x_BxLxD.shape[-1]
        inner = self.inner_dim(dim)
        x_BxLxD = x_BxLxD.astype(self.dtype)
        prev_BxLxD = token_shift(x_BxLxD)
        ramp = _channel_ramp(dim)

        def lerp(name):
            init = nn.with_logical_partitioning(_const_init(lambda shape: ramp), ("embed",))
            mix_D = self.param(name, init, (dim,), self.param_dtype)
            mix_D = mix_D.astype(self.dtype)
            return x_BxLxD * mix_D + prev_BxLxD * (1 - mix_D)

        x_k, x_r = lerp("mix_k"), lerp("mix_r")
        k_BxLxF = jnp.square(jax.nn.relu(torch_dense(self, inner, ("embed", "mlp"), "key")(x_k)))
        kv_BxLxD = torch_dense(self, dim, ("mlp", "embed"), "value")(k_BxLxF)
        r_BxLxD = torch_dense(self, dim, ("embed", "mlp"), "receptance")(x_r)
        return jax.nn.sigmoid(r_BxLxD) * kv_BxLxD

    def flops(self, dim: int, seq_len: int) -> int:
        """Two token-shift lerps (3 per element), key 2*L*D*F, relu^2 (2 per hidden element), value
        2*L*F*D, receptance 2*L*D*D, sigmoid and product (1 per element each)."""
        inner = self.inner_dim(dim)
        return int(6 * seq_len * dim + dense_flops(seq_len, dim, inner) + 2 * seq_len * inner
                   + dense_flops(seq_len, inner, dim) + dense_flops(seq_len, dim, dim)
                   + 2 * seq_len * dim)

    def state_size(self, dim: int, seq_len: int) -> int:
        """D: the token-shift vector x_{t-1}."""
        return int(dim)


register_layer("rwkv5-time-mixer", RWKV5TimeMixer, {"head_dim": 16})
register_layer("rwkv6-time-mixer", RWKV6TimeMixer,
               {"head_dim": 16, "mix_lora_rank": 32, "decay_lora_rank": 64})
register_layer("rwkv5-channel-mixer", RWKVChannelMixer, {})
register_layer("rwkv6-channel-mixer", RWKVChannelMixer, {})

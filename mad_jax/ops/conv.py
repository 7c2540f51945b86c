"""Long causal depthwise convolution (the Hyena long filter)."""
from __future__ import annotations

import jax.numpy as jnp

from mad_jax.ops import dispatch


def _pad_filter(h_LhxD: jnp.ndarray, seq_len: int) -> jnp.ndarray:
    filter_len = h_LhxD.shape[0]
    if filter_len > seq_len:
        raise ValueError(f"filter length {filter_len} exceeds sequence length {seq_len}")
    return jnp.pad(h_LhxD, ((0, seq_len - filter_len), (0, 0)))


def fft_size(seq_len: int) -> int:
    """The FFT length of a causal convolution over `seq_len` positions: the smallest n >= 2L - 1
    (so the circular convolution never wraps onto the kept outputs) whose only prime factors are
    2, 3 and 5, where FFTs are fast. The plain 2L can be slow: at L = 127 it is 254 = 2 x 127, and
    XLA:CPU's FFT of it takes about twice as long as of 256."""
    n = max(2 * seq_len - 1, 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_causal_conv(x_BxLxD: jnp.ndarray, h_LhxD: jnp.ndarray) -> jnp.ndarray:
    """Reference: y[b,t,d] = sum_{s<=t} h[t-s,d] x[b,s,d] via a real FFT of length
    `fft_size(L)` (>= 2L - 1: exact linear convolution), in float32.

    x: [B, L, D]; h: [Lh, D] with Lh <= L (zero-padded to L). Returns [B, L, D] in x.dtype.
    """
    seq_len = x_BxLxD.shape[1]
    h_LxD = _pad_filter(h_LhxD, seq_len).astype(jnp.float32)
    n = fft_size(seq_len)
    x_f = jnp.fft.rfft(x_BxLxD.astype(jnp.float32), n=n, axis=1)
    h_f = jnp.fft.rfft(h_LxD, n=n, axis=0)
    y_BxLxD = jnp.fft.irfft(x_f * h_f[None], n=n, axis=1)[:, :seq_len]
    return y_BxLxD.astype(x_BxLxD.dtype)


def causal_conv(x_BxLxD: jnp.ndarray, h_LhxD: jnp.ndarray, *, impl: str = "auto") -> jnp.ndarray:
    """Long causal depthwise convolution y[b,t,d] = sum_{s<=t} h[t-s,d] x[b,s,d].

    x: [B, L, D]; h: [Lh, D], Lh <= L. Computed in float32, returned in x.dtype. `impl` picks the
    Pallas kernel or the FFT reference (see `mad_jax.ops.dispatch`).
    """
    choice, forced = dispatch.resolve_impl(impl, "causal_conv")
    if choice == "pallas":
        import pallas_kernels

        h_LxD = _pad_filter(h_LhxD, x_BxLxD.shape[1]).astype(jnp.float32)
        try:
            # float32 operands: a bfloat16 x would make the kernel round the filter to bfloat16.
            y_BxLxD = pallas_kernels.causal_conv(x_BxLxD.astype(jnp.float32), h_LxD)
            return y_BxLxD.astype(x_BxLxD.dtype)
        except pallas_kernels.UnsupportedShapeError:
            if forced:
                raise
    return fft_causal_conv(x_BxLxD, h_LhxD)

"""Core sequence ops: pure-jnp references and the dispatch to Pallas kernels.

Public ops (each takes `impl="auto" | "xla" | "pallas"`):
  causal_conv(x_BxLxD, h_LhxD)                         long causal depthwise convolution
  selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)   Mamba's selective SSM scan
  linear_attention(q, k, v, log_decay_BxHxLxK=None, bonus_HxK=None, chunk_size=64)
References and oracles: fft_causal_conv, associative_selective_scan, selective_scan_sequential,
linear_attention_chunked, linear_attention_recurrent. The process-wide default impl is set with
`set_kernel_impl(...)` or, scoped, `with kernel_impl(...):`.
"""
from mad_jax.ops.conv import causal_conv, fft_causal_conv
from mad_jax.ops.dispatch import IMPLS, get_kernel_impl, kernel_impl, set_kernel_impl
from mad_jax.ops.linear_attention import (linear_attention, linear_attention_chunked,
                                          linear_attention_recurrent)
from mad_jax.ops.scan import associative_selective_scan, selective_scan, selective_scan_sequential

__all__ = [
    "IMPLS", "associative_selective_scan", "causal_conv", "fft_causal_conv", "get_kernel_impl",
    "kernel_impl", "linear_attention", "linear_attention_chunked", "linear_attention_recurrent",
    "selective_scan", "selective_scan_sequential", "set_kernel_impl",
]

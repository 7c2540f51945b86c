"""Core sequence ops: pure-jnp references and the dispatch to Pallas kernels.

Public ops that take `impl="auto" | "xla" | "pallas"`:
  causal_conv(x_BxLxD, h_LhxD)                         long causal depthwise convolution
  selective_scan(x_BxLxD, dt_BxLxD, A_DxN, B_BxLxN, C_BxLxN)   Mamba's selective SSM scan
  linear_attention(q, k, v, log_decay_BxHxLxK=None, bonus_HxK=None, chunk_size=64)
  delta_rule(q, k, v, beta_BxHxL, log_gate_BxHxL=None, chunk_size=64)   (gated) DeltaNet
Ops with one implementation (no `impl`):
  generalized_delta_rule(q, k, v, a, b, log_decay_BxHxLxK=None)  RWKV-7 (diag + rank 1; lax.scan)
  linear_recurrence(a_BxLxD, b_BxLxD, h0=None)         h_t = a_t h_{t-1} + b_t (associative scan)
References and oracles: fft_causal_conv (its FFT length: fft_size(L)), associative_selective_scan,
selective_scan_sequential, linear_attention_chunked, linear_attention_recurrent,
delta_rule_chunked, delta_rule_recurrent, generalized_delta_rule_recurrent,
linear_recurrence_sequential. The process-wide default impl is set with `set_kernel_impl(...)` or,
scoped, `with kernel_impl(...):`.
"""
from mad_jax.ops.conv import causal_conv, fft_causal_conv, fft_size
from mad_jax.ops.delta_rule import (delta_rule, delta_rule_chunked, delta_rule_recurrent,
                                    generalized_delta_rule, generalized_delta_rule_recurrent)
from mad_jax.ops.dispatch import IMPLS, get_kernel_impl, kernel_impl, set_kernel_impl
from mad_jax.ops.linear_attention import (linear_attention, linear_attention_chunked,
                                          linear_attention_recurrent)
from mad_jax.ops.recurrence import linear_recurrence, linear_recurrence_sequential
from mad_jax.ops.scan import associative_selective_scan, selective_scan, selective_scan_sequential

__all__ = [
    "IMPLS", "associative_selective_scan", "causal_conv", "delta_rule", "delta_rule_chunked",
    "delta_rule_recurrent", "fft_causal_conv", "fft_size", "generalized_delta_rule",
    "generalized_delta_rule_recurrent", "get_kernel_impl", "kernel_impl", "linear_attention",
    "linear_attention_chunked", "linear_attention_recurrent", "linear_recurrence",
    "linear_recurrence_sequential", "selective_scan", "selective_scan_sequential",
    "set_kernel_impl",
]

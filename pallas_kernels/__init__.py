"""Pallas kernels for the core sequence ops, with custom VJPs. Independent of mad_jax.

  causal_conv(x [B, L, D], h [L, D]) -> y [B, L, D]        long causal depthwise convolution
  selective_scan(x, dt [B, L, D], A [D, N], B, C [B, L, N]) -> y [B, L, D]
  linear_attention(q, k [B, H, L, K], v [B, H, L, V], log_decay [B, H, L, K]) -> o [B, H, L, V]
  delta_rule(q, k [B, H, L, K], v [B, H, L, V], beta, log_gate [B, H, L]) -> o [B, H, L, V]

Each op lives in its own sub-package (api, forward kernel, backward kernel, config dataclass with
block sizes and `interpret`). Kernels raise `UnsupportedShapeError` where they cannot run, so a
dispatcher can fall back to an XLA implementation.
"""
from pallas_kernels._common import UnsupportedShapeError
from pallas_kernels.causal_conv import CausalConvConfig, causal_conv
from pallas_kernels.delta_rule import DeltaRuleConfig, delta_rule
from pallas_kernels.linear_attention import LinearAttentionConfig, linear_attention
from pallas_kernels.selective_scan import SelectiveScanConfig, selective_scan

__all__ = ["CausalConvConfig", "DeltaRuleConfig", "LinearAttentionConfig", "SelectiveScanConfig",
           "UnsupportedShapeError", "causal_conv", "delta_rule", "linear_attention",
           "selective_scan"]

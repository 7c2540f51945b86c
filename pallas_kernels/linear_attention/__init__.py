"""Chunked linear attention with per-channel decay (GLA): Pallas forward and backward kernels."""
from pallas_kernels.linear_attention.api import linear_attention
from pallas_kernels.linear_attention.config import LinearAttentionConfig

__all__ = ["LinearAttentionConfig", "linear_attention"]

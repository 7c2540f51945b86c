"""Long causal depthwise convolution as blocked Toeplitz matmuls, with backward kernels."""
from pallas_kernels.causal_conv.api import causal_conv
from pallas_kernels.causal_conv.config import CausalConvConfig

__all__ = ["CausalConvConfig", "causal_conv"]

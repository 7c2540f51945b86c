"""Chunked (gated) delta rule, WY / UT-transform form: Pallas forward kernel, custom VJP."""
from pallas_kernels.delta_rule.api import delta_rule
from pallas_kernels.delta_rule.config import DeltaRuleConfig

__all__ = ["DeltaRuleConfig", "delta_rule"]

"""Selective scan (Mamba): sequential-in-time Pallas kernel with a reverse-time backward kernel."""
from pallas_kernels.selective_scan.api import selective_scan
from pallas_kernels.selective_scan.config import SelectiveScanConfig

__all__ = ["SelectiveScanConfig", "selective_scan"]

"""Genomes of one generation trained side by side, each on its own local device.

`DevicePool(workers)`: `submit(name, fn, *args)` runs `fn(*args)` in a worker thread under
`jax.default_device(device)`, on a device no other running call holds, and returns a future.
The search reads the futures in its own thread, in the order a sequential search evaluates,
and writes its store, state and log lines there (`run.py`), so a parallel search writes what a
sequential one writes, in the same order, and resumes the same way.

How a worker trains on its device: the protocol trains with `mesh=""`, a 1x1 mesh over the
default device (`training.loop.make_partitioner`), and `jax.default_device` is thread-local.
Signals: only the main thread installs handlers (`training.signals.graceful_stop`, a no-op in
any other thread); a stop request is process-wide, so every worker's training stops at its
next step boundary with its checkpoint written.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Any, Callable

import jax

from mad_jax.search.errors import SearchError

_WORKER = threading.local()  # the name and device of the call a worker thread runs


def worker_count(parallel: int | str, size: int) -> int:
    """Genomes trained at once: `parallel` ("auto" or 0: every local device), at most `size`
    (a generation's genomes) and never more than the local devices."""
    if parallel == 1:
        return 1
    devices = len(jax.local_devices())
    if parallel in ("auto", 0):
        return max(1, min(devices, size))
    if parallel > devices:
        raise SearchError(f"parallel={parallel} trains each genome on its own device, but this "
                          f"process has {devices} local device(s); use at most {devices} or "
                          "parallel='auto'")
    return max(1, min(parallel, size))


def worker_device() -> str | None:
    """"cpu:3": the device of the pool's call this thread runs (None outside one)."""
    return getattr(_WORKER, "device", None)


def worker_prefix() -> str:
    """"[<name> on cpu:3] " inside a pool's call, "" elsewhere: tags a worker's log lines."""
    device = worker_device()
    return "" if device is None else f"[{_WORKER.name} on {device}] "


class DevicePool:
    """Worker threads, one per device (this process's first `workers` local devices); a call
    holds its device until it returns."""

    def __init__(self, workers: int):
        self.devices = jax.local_devices()[:workers]
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for device in self.devices:
            self._free.put(device)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=len(self.devices), thread_name_prefix="mad_jax-search")

    def submit(self, name: str, fn: Callable, *args: Any) -> concurrent.futures.Future:
        return self._executor.submit(self._call, name, fn, args)

    def _call(self, name: str, fn: Callable, args: tuple) -> Any:
        device = self._free.get()  # never waits: as many workers as devices
        _WORKER.name, _WORKER.device = name, f"{device.platform}:{device.id}"
        try:
            with jax.default_device(device):
                return fn(*args)
        finally:
            _WORKER.name = _WORKER.device = None
            self._free.put(device)

    def close(self, wait: bool = True) -> None:
        """Waits for the running calls (wait=False: cancels the queued ones and returns; the
        running ones finish in their threads)."""
        self._executor.shutdown(wait=wait, cancel_futures=not wait)

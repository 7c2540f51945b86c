"""SIGINT and SIGTERM as a request to stop at the next step boundary, never mid-program.

Preemptible TPU VMs send SIGTERM before they go; Ctrl-C sends SIGINT. Inside `graceful_stop()`
either signal only records the request: the training loop sees it at its next step boundary
(`stop_requested()`), writes a checkpoint, and raises `Interrupted`, which the CLI turns into one
line and exit status 130 (SIGINT) or 143 (SIGTERM).

A signal can arrive while the process is inside XLA (compiling the first program can take
minutes on a large grid) or preparing data, where no step boundary comes soon. Python runs signal
handlers only between bytecodes, so a watcher thread waits on the signal wakeup file descriptor,
which the interpreter writes from its C-level handler at once: if the loop has not taken up the
request within `grace_s`, the watcher prints one line and ends the process with the same status.
Nothing since the last checkpoint is written then, and nothing on disk is left half-written
(every result file is replaced atomically and orbax finalises checkpoints by renaming). A second
signal ends the process at once.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Callable, Iterator

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_lock = threading.Lock()
_requested: int | None = None
_taken_up = threading.Event()


class Interrupted(KeyboardInterrupt):
    """Training stopped at a step boundary because of SIGINT or SIGTERM (its checkpoint is
    written); `exit_status` is 128 + the signal number."""

    def __init__(self, signum: int, where: str = ""):
        self.signum = signum
        self.where = where
        super().__init__(f"{signal.Signals(signum).name}{f' at {where}' if where else ''}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def stop_requested() -> int | None:
    """The signal number of a pending stop request, or None."""
    return _requested


def take_up() -> int | None:
    """Called by a loop that has reached a step boundary and will stop there: stops the watcher's
    grace countdown. Returns the pending signal number (None if there is none)."""
    if _requested is not None:
        _taken_up.set()
    return _requested


def _request(signum: int, log: Callable[[str], None]) -> bool:
    """Records a request; False if one was pending already."""
    global _requested
    with _lock:
        first = _requested is None
        if first:
            _requested = signum
    if first:
        log(f"received {signal.Signals(signum).name}: stopping at the next step boundary "
            f"(a checkpoint is written, then exit {128 + signum})")
    return first


def _exit_now(signum: int, message: str) -> None:
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


def _watch(read_fd: int, grace_s: float, stop: threading.Event, log) -> None:
    deadline = None  # when a request not taken up by then ends the process
    while not stop.is_set():
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([read_fd], [], [], timeout)
        if stop.is_set():
            return
        if not readable:
            if _taken_up.is_set():
                deadline = None
            elif _requested is not None:
                _exit_now(_requested, f"interrupted ({signal.Signals(_requested).name}) while "
                                      "compiling or preparing data: exiting without a new "
                                      "checkpoint; run the same command again to resume from "
                                      "the last one")
            continue
        try:
            data = os.read(read_fd, 16)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in _SIGNALS:
                continue
            if not _request(signum, log):
                _exit_now(signum, f"{signal.Signals(signum).name} again: exiting now; run the "
                                  "same command again to resume from the last checkpoint")
            deadline = time.monotonic() + grace_s


@contextlib.contextmanager
def graceful_stop(*, grace_s: float = 20.0,
                  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
                  ) -> Iterator[None]:
    """Within this context SIGINT and SIGTERM request a stop (see the module docstring).

    A no-op outside the main thread (signal handlers can only be set there). On exit the previous
    handlers are restored and a request that was never taken up is dropped.
    """
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    stop = threading.Event()
    _requested = None
    _taken_up.clear()
    for s in _SIGNALS:  # the watcher handles the request; the handler only keeps Python quiet
        signal.signal(s, lambda signum, frame: None)
    watcher = threading.Thread(target=_watch, args=(read_fd, grace_s, stop, log),
                               name="mad_jax-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write_fd)  # the watcher's read returns
        watcher.join(timeout=1.0)
        os.close(read_fd)
        _requested = None
        _taken_up.set()

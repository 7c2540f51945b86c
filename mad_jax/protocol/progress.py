"""Progress lines for long sweeps: which setting, step, loss, accuracy, speed, ETA."""
from __future__ import annotations

import datetime
import time
from typing import Callable


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    return str(datetime.timedelta(seconds=int(round(max(seconds, 0.0)))))


class Progress:
    """Prints at most one line every `every_s` seconds per setting (and always the last step).

    Work is measured in token-steps (steps x sequence length) so that the sweep's ETA accounts
    for settings with longer sequences; the rate is learned from the settings trained so far.
    """

    def __init__(self, total_work: float, *, every_s: float = 10.0,
                 log: Callable[[str], None] = print):
        self.total_work, self.every_s, self.log = float(total_work), every_s, log
        self.done_work = 0.0
        self.measured_work = 0.0
        self.measured_s = 0.0
        self._label, self._cost, self._last_print, self._last_step = "", 1.0, 0.0, 0

    def start_setting(self, label: str, cost_per_step: float) -> None:
        self._label, self._cost, self._last_print, self._last_step = label, cost_per_step, 0.0, 0
        self._last_elapsed = None

    def skip(self, work: float) -> None:
        self.total_work -= work

    def end_setting(self, work: float) -> None:
        self.done_work += work

    def __call__(self, info: dict) -> None:
        """on_log callback of mad_jax.training.fit."""
        step, total = info["step"], info["total_steps"]
        if self._last_elapsed is not None:
            self.measured_work += (step - self._last_step) * self._cost
            self.measured_s += info["elapsed_s"] - self._last_elapsed
        self._last_step, self._last_elapsed = step, info["elapsed_s"]
        now = time.monotonic()
        if now - self._last_print < self.every_s and step < total and any(info["active"]):
            return
        self._last_print = now
        rate = self.measured_work / self.measured_s if self.measured_s > 0 else None
        setting_left = (total - step) * self._cost
        sweep_left = self.total_work - self.done_work - step * self._cost
        eta = format_duration(setting_left / rate if rate else None)
        eta_all = format_duration(sweep_left / rate if rate else None)
        losses = [v for v, a in zip(info["train_loss"], info["active"]) if a] or info["train_loss"]
        best = [b for b in info["best_test_accuracy"] if b is not None]
        acc = f"best test acc {max(best):.3f}" if best else "best test acc -"
        stopped = len(info["active"]) - sum(info["active"])
        self.log(f"{self._label} step {step}/{total}  loss {min(losses):.3f}  {acc}"
                 f"{f'  ({stopped} stopped)' if stopped else ''}  "
                 f"{info['steps_per_s']:.2f} step/s  ETA {eta} (sweep {eta_all})")

"""The MAD protocol: settings x hyperparameter grid -> runs -> results table -> MAD scores ->
report."""
from mad_jax.protocol import results_table
from mad_jax.protocol.presets import PRESETS, Preset, get_preset
from mad_jax.protocol.report import format_score_table, preset_notice, write_report
from mad_jax.protocol.run import (ProtocolError, ProtocolRun, check_tasks, check_writable, execute,
                                  is_mad_protocol, plan, prepare, run, train_config)
from mad_jax.protocol.scores import score_intervals, score_table, scores, setting_scores

__all__ = [
    "PRESETS", "Preset", "ProtocolError", "ProtocolRun", "check_tasks", "check_writable",
    "execute", "format_score_table", "get_preset", "is_mad_protocol", "plan", "prepare",
    "preset_notice", "results_table", "run", "score_intervals", "score_table", "scores",
    "setting_scores", "train_config", "write_report",
]

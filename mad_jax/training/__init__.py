"""Training: pure train/eval steps, AdamW + the warmup-cosine schedule, the vmapped hyperparameter
grid, checkpoints, metrics files, the one loop (`loop.py`) and the MAD adapter on it (`fit` on
arrays, `train` on a task setting)."""
from mad_jax.training.checkpoints import CheckpointError, Checkpointer, local_checkpoint_dir
from mad_jax.training.config import TrainConfig, to_steps
from mad_jax.training.hparam_grid import (DEFAULT_GRID, GridState, init_grid_state,
                                          make_grid_eval_step, make_grid_evaluate,
                                          make_grid_train_step, run_state)
from mad_jax.training.losses import accuracy, mean_cross_entropy, token_stats
from mad_jax.training.metrics_writer import MetricsWriter, read_metrics
from mad_jax.training.optimizer import make_optimizer, warmup_cosine
from mad_jax.training.steps import (TrainState, init_params, init_train_state, make_create_state,
                                    make_eval_step, make_train_step)
from mad_jax.models.accounting import count_params
from mad_jax.training.train import (fit, fit_packed, load_task_data, run_name,
                                    split_task_setting, train)

__all__ = [
    "CheckpointError", "Checkpointer", "DEFAULT_GRID", "GridState", "MetricsWriter", "TrainConfig",
    "TrainState", "accuracy", "count_params", "fit", "fit_packed", "init_grid_state",
    "init_params", "init_train_state", "load_task_data", "local_checkpoint_dir",
    "make_create_state", "make_eval_step",
    "make_grid_eval_step", "make_grid_evaluate", "make_grid_train_step", "make_optimizer",
    "make_train_step", "warmup_cosine",
    "mean_cross_entropy", "read_metrics", "run_name", "run_state", "split_task_setting",
    "to_steps", "token_stats", "train",
]

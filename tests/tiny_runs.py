"""What the tests that train share: a learnable copy task and the smallest protocol runs."""
import numpy as np

from mad_jax import tasks

# Protocol runs of a few steps on a few dozen examples that still evaluate, checkpoint and log.
TINY_RUN = {"train_steps": 4, "batch_size": 8, "max_train_examples": 64, "max_test_examples": 32,
            "eval_every_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 1}
# Half of that, for tests that only need runs to exist (identity, validation).
SHORTEST_RUN = dict(TINY_RUN, train_steps=2, max_train_examples=32, max_test_examples=16)


def copy_data(n, seed, vocab_size=16, length=16):
    """Next-token data where the second half repeats the first: learnable, not trivial.

    Returns (inputs, targets), int32 [n, length - 1]; only the copied half is scored.
    """
    rng = np.random.default_rng(seed)
    half = rng.integers(0, vocab_size, (n, length // 2))
    seq = np.concatenate([half, half], axis=1).astype(np.int32)
    targets = seq[:, 1:].copy()
    targets[:, : length // 2 - 1] = tasks.IGNORE_INDEX
    return seq[:, :-1], targets.astype(np.int32)

"""The validation split: made and scored as the test split, from its own streams, deterministic,
and disjoint from the test split (no validation row has the inputs of a test row)."""
import numpy as np
import pytest

from mad_jax import tasks
from mad_jax.tasks import cache, generation

IGNORE = tasks.IGNORE_INDEX
# Small settings of every task, and tiny ones whose test split covers much of the sequence space,
# so that the validation split must skip test sequences.
SMALL = {
    "in-context-recall": {"seq_len": 16},
    "noisy-in-context-recall": {"seq_len": 16, "frac_noise": 0.6},
    "fuzzy-in-context-recall": {"seq_len": 32},
    "selective-copying": {"seq_len": 24, "num_tokens_to_copy": 4},
    "compression": {"seq_len": 8},
    "memorization": {"seq_len": 8},
}
TINY = {  # (task, params): at most a few dozen distinct sequences
    "compression": {"vocab_size": 3, "seq_len": 5},  # 2^4 = 16 sequences
    "memorization": {"vocab_size": 7, "seq_len": 4},  # 3 keys: 3^2 = 9 sequences
    "selective-copying": {"vocab_size": 4, "seq_len": 7, "num_tokens_to_copy": 2},  # 12
    "in-context-recall": {"vocab_size": 4, "seq_len": 6},  # 2 keys, 2 values
}


def _rows(inputs):
    return {row.tobytes() for row in inputs}


def gen(task, n, split, seed=0, **params):
    return tasks.generate(task, num_examples=n, seed=seed, split=split, **params)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_deterministic_seeded_and_prefix_stable(task):
    p = SMALL[task]
    a, b = gen(task, 300, "validation", **p), gen(task, 300, "validation", **p)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], gen(task, 300, "validation", seed=1, **p)[0])
    for n in (0, 1, 37):  # a smaller validation set is a prefix of a larger one
        x, y = gen(task, n, "validation", **p)
        np.testing.assert_array_equal(x, a[0][:n])
        np.testing.assert_array_equal(y, a[1][:n])


@pytest.mark.parametrize("task", tasks.TASKS)
def test_disjoint_from_the_test_split_and_its_own_stream(task):
    p = SMALL[task]
    test_x, _ = gen(task, 1280, "test", **p)
    val_x, _ = gen(task, 1280, "validation", **p)
    assert not _rows(val_x) & _rows(test_x)
    assert not np.array_equal(val_x[:8], test_x[:8]), "not the test split's stream"
    train_x, _ = gen(task, 64, "train", **p)
    assert not np.array_equal(val_x[:8], train_x[:8]), "not the train split's stream"


@pytest.mark.parametrize("task", sorted(TINY))
def test_skips_test_sequences_in_order(task):
    """Where the test split holds most possible sequences, the validation split is the validation
    stream with those sequences left out, in order: independent of who generates the chunks."""
    p = tasks.resolve_params(task, TINY[task])
    num_test = 6
    test_x, _ = gen(task, num_test, "test", num_test_examples=num_test, **p)
    val_x, val_y = gen(task, 40, "validation", num_test_examples=num_test, **p)
    assert not _rows(val_x) & _rows(test_x)
    raw_x, raw_y = generation.generate_chunk(task, p, "validation", 0, chunk=0)
    fresh = np.array([row.tobytes() not in _rows(test_x) for row in raw_x])
    assert not fresh.all(), "the setting is tiny enough that some draws repeat test rows"
    np.testing.assert_array_equal(val_x, raw_x[fresh][:40])
    np.testing.assert_array_equal(val_y, raw_y[fresh][:40])
    # the test split it avoids is the setting's: a larger one changes the validation rows
    other, _ = gen(task, 40, "validation", num_test_examples=num_test + 3, **p)
    assert not np.array_equal(other, val_x)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_same_structure_and_statistics_as_test(task):
    p = tasks.resolve_params(task, SMALL[task])
    test_x, test_y = gen(task, 1024, "test", **p)
    val_x, val_y = gen(task, 1024, "validation", **p)
    assert val_x.shape == test_x.shape and val_x.dtype == test_x.dtype == np.int32
    assert val_y.shape == test_y.shape and val_y.dtype == np.int32
    # scored positions: which columns are ever scored (fixed layouts), and how many per row
    if task != "fuzzy-in-context-recall":
        np.testing.assert_array_equal((val_y != IGNORE).any(axis=0),
                                      (test_y != IGNORE).any(axis=0))
    scored_val, scored_test = (val_y != IGNORE).sum(axis=1), (test_y != IGNORE).sum(axis=1)
    se = np.hypot(scored_val.std(), scored_test.std()) / np.sqrt(len(val_y))
    assert abs(scored_val.mean() - scored_test.mean()) <= 5 * se + 1e-9
    assert val_x.min() >= 0 and val_x.max() < p["vocab_size"]
    assert val_y[val_y != IGNORE].min() >= 0 and val_y.max() < p["vocab_size"]
    if task in ("in-context-recall", "noisy-in-context-recall"):
        # test scoring, not the train split's next-token targets
        assert not np.array_equal(val_y[:, :-1], val_x[:, 1:])


def test_memorization_shares_the_map_of_train_and_test():
    """Memorization is the recall of one fixed map: the validation split asks for the same map,
    on key sequences that differ from the test split's."""
    from mad_jax.tasks.memorization import memorization_map
    value_of = memorization_map(256, 3)
    for split in ("train", "validation", "test"):
        x, y = gen("memorization", 200, split, seed=3)
        np.testing.assert_array_equal(y[:, 1::2], value_of[x[:, 0::2]])


def test_load_validation_sizes_and_cache(tmp_path):
    setting = {**tasks.settings("in-context-recall")[0], "seq_len": 16,
               "num_train_examples": 40, "num_test_examples": 24}
    x, y = tasks.load("in-context-recall", setting, "validation", seed=0)
    assert x.shape == (24, 15)  # as many as the test split by default
    ref = gen("in-context-recall", 24, "validation", num_test_examples=24, seq_len=16)
    np.testing.assert_array_equal(x, ref[0])
    np.testing.assert_array_equal(y, ref[1])
    sized = {**setting, "num_validation_examples": 10}
    assert tasks.load("in-context-recall", sized, "validation", seed=0)[0].shape == (10, 15)

    cached = tasks.load("in-context-recall", setting, "validation", seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached[0], x)
    again = tasks.load("in-context-recall", setting, "validation", seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(again[1], y)
    path = cache.cache_path
    assert path(tmp_path, "in-context-recall", setting, "validation", 0) != \
        path(tmp_path, "in-context-recall", setting, "test", 0)
    # the validation entry depends on the test split it avoids
    assert path(tmp_path, "in-context-recall", setting, "validation", 0) != \
        path(tmp_path, "in-context-recall", {**setting, "num_test_examples": 48}, "validation", 0)

"""The data cache (`load`: a local folder or a URL) and the grain pipeline (`batches`)."""
import os
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from mad_jax import storage, tasks
from mad_jax.tasks import cache

SMALL = {"seq_len": 16, "num_train_examples": 40, "num_test_examples": 24}


# --- load and its cache -----------------------------------------------------------------------

def test_load_sizes_follow_the_setting():
    setting = {**tasks.settings("in-context-recall")[0], **SMALL}
    x, y = tasks.load("in-context-recall", setting, "train", seed=0)
    assert x.shape == y.shape == (40, 15)
    x_test, _ = tasks.load("in-context-recall", setting, "test", seed=0)
    assert x_test.shape == (24, 15)
    ref = tasks.generate("in-context-recall", num_examples=40, seed=0, split="train", **setting)
    np.testing.assert_array_equal(x, ref[0])


def test_cache_roundtrip_reads_from_disk(tmp_path, monkeypatch):
    setting = {**tasks.settings("selective-copying")[0], "seq_len": 40, "num_train_examples": 30}
    first = tasks.load("selective-copying", setting, "train", seed=1, cache_dir=tmp_path)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("selective-copying-train-")

    def fail(*args, **kwargs):
        raise AssertionError("should have been read from the cache")
    monkeypatch.setattr(cache, "generate", fail)
    second = tasks.load("selective-copying", setting, "train", seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert second[0].dtype == np.int32


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_cache_on_a_url(tmp_path, monkeypatch, scheme):
    url = (f"memory://{uuid.uuid4().hex}/data" if scheme == "memory"
           else "file://" + str(tmp_path / "data"))
    setting = {**tasks.settings("compression")[0], "num_train_examples": 12}
    first = tasks.load("compression", setting, "train", seed=2, cache_dir=url)
    path = cache.cache_path(url, "compression", setting, "train", seed=2)
    assert path.startswith(url + "/compression-train-")
    assert storage.list_files(url) == [path.rsplit("/", 1)[-1]]
    monkeypatch.setattr(cache, "generate", lambda *a, **k: pytest.fail("not read from the cache"))
    second = tasks.load("compression", setting, "train", seed=2, cache_dir=url)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    monkeypatch.undo()
    storage.write_bytes(path, b"not a zip file")  # a damaged entry is regenerated
    again = tasks.load("compression", setting, "train", seed=2, cache_dir=url)
    np.testing.assert_array_equal(again[0], first[0])
    assert storage.read_bytes(path).startswith(b"PK")


def test_cache_key_separates_split_seed_params_and_size(tmp_path):
    setting = {**tasks.settings("compression")[0], "num_train_examples": 8,
               "num_test_examples": 8}
    paths = {
        cache.cache_path(tmp_path, "compression", setting, "train", seed=0),
        cache.cache_path(tmp_path, "compression", setting, "test", seed=0),
        cache.cache_path(tmp_path, "compression", setting, "train", seed=1),
        cache.cache_path(tmp_path, "compression", {**setting, "vocab_size": 32}, "train", seed=0),
        cache.cache_path(tmp_path, "compression", {**setting, "num_train_examples": 9}, "train",
                         seed=0),
    }
    assert len(paths) == 5
    # the same data set however the setting is spelled (defaults filled in, num_test irrelevant)
    assert cache.cache_path(tmp_path, "compression", {"num_train_examples": 8}, "train", 0) == \
        cache.cache_path(tmp_path, "compression", setting, "train", 0)


def test_cache_key_carries_the_format_version(tmp_path, monkeypatch):
    """Entries written by code whose data differ (an older format) are never served."""
    setting = {**tasks.settings("fuzzy-in-context-recall")[0], "num_train_examples": 8}
    new = cache.cache_path(tmp_path, "fuzzy-in-context-recall", setting, "train", seed=0)
    old_x = np.zeros((8, 127), np.int32)  # an entry of format 1: fuzzy inputs of seq_len - 1
    monkeypatch.setattr(cache, "FORMAT_VERSION", cache.FORMAT_VERSION - 1)
    old = cache.cache_path(tmp_path, "fuzzy-in-context-recall", setting, "train", seed=0)
    assert old != new
    cache._write(old, old_x, old_x, "old")
    monkeypatch.undo()
    x, _ = tasks.load("fuzzy-in-context-recall", setting, "train", seed=0, cache_dir=tmp_path)
    assert x.shape == (8, 128)


def test_damaged_cache_entry_is_regenerated(tmp_path):
    setting = {**tasks.settings("memorization")[0], "num_train_examples": 10}
    path = cache.cache_path(tmp_path, "memorization", setting, "train", seed=0)
    good = tasks.load("memorization", setting, "train", seed=0, cache_dir=tmp_path)
    with open(path, "wb") as f:
        f.write(b"not a zip file")
    again = tasks.load("memorization", setting, "train", seed=0, cache_dir=tmp_path)
    np.testing.assert_array_equal(good[0], again[0])
    with np.load(path) as data:  # rewritten whole
        np.testing.assert_array_equal(data["inputs"], good[0])


def test_concurrent_writers_of_one_entry(tmp_path):
    setting = {**tasks.settings("noisy-in-context-recall")[0], "seq_len": 32,
               "num_train_examples": 300}
    results, errors = [], []
    barrier = threading.Barrier(8)

    def worker():
        try:
            barrier.wait()
            results.append(tasks.load("noisy-in-context-recall", setting, "train", seed=4,
                                      cache_dir=tmp_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert os.listdir(tmp_path) == [os.path.basename(
        cache.cache_path(tmp_path, "noisy-in-context-recall", setting, "train", 4))]
    for x, y in results:
        np.testing.assert_array_equal(x, results[0][0])
    final = tasks.load("noisy-in-context-recall", setting, "train", seed=4, cache_dir=tmp_path)
    np.testing.assert_array_equal(final[0], results[0][0])


@pytest.mark.slow
def test_concurrent_processes_write_one_entry(tmp_path):
    code = ("import sys; from mad_jax import tasks; "
            "s = {'seq_len': 256, 'num_train_examples': 4000}; "
            "x, _ = tasks.load('fuzzy-in-context-recall', s, 'train', seed=0, "
            "cache_dir=sys.argv[1]); "
            "print(int(x.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              cwd=os.path.dirname(os.path.dirname(__file__))) for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    assert len(os.listdir(tmp_path)) == 1


# --- batches ------------------------------------------------------------------------------------

def _data(n=40, length=6):
    inputs = np.arange(n * length, dtype=np.int32).reshape(n, length)
    return inputs, -inputs


def _rows(batch):
    return (batch["inputs"][:, 0] // 6).tolist()


def test_batches_epochs_are_permutations():
    inputs, targets = _data()
    it = tasks.batches(inputs, targets, batch_size=8, seed=0, num_epochs=3)
    batches = list(it)
    assert len(batches) == 15
    for b in batches:
        assert b["inputs"].shape == (8, 6) and b["inputs"].dtype == np.int32
        np.testing.assert_array_equal(b["targets"], -b["inputs"])  # rows stay paired
    epochs = [sum((_rows(b) for b in batches[5 * e:5 * e + 5]), []) for e in range(3)]
    for rows in epochs:
        assert sorted(rows) == list(range(40))
    assert epochs[0] != epochs[1] != epochs[2], "reshuffled every epoch"


def test_batches_deterministic_and_seeded():
    inputs, targets = _data()
    order = lambda seed: [_rows(b) for b in tasks.batches(inputs, targets, batch_size=8,
                                                           seed=seed, num_epochs=2)]
    assert order(3) == order(3)
    assert order(3) != order(4)


def test_batches_resume_at_step():
    inputs, targets = _data()
    full = [_rows(b) for b in tasks.batches(inputs, targets, batch_size=8, seed=1, num_epochs=4)]
    resumed = [_rows(b) for b in tasks.batches(inputs, targets, batch_size=8, seed=1,
                                                num_epochs=4, start_step=7)]
    assert resumed == full[7:]
    forever = tasks.batches(inputs, targets, batch_size=8, seed=1, start_step=7)
    assert [_rows(next(forever)) for _ in range(13)] == full[7:]


def test_batches_shards_split_each_global_batch():
    inputs, targets = _data()
    full = [_rows(b) for b in tasks.batches(inputs, targets, batch_size=8, seed=2, num_epochs=2)]
    shards = [[_rows(b) for b in tasks.batches(inputs, targets, batch_size=8, seed=2,
                                                num_epochs=2, shard_index=i, shard_count=4)]
              for i in range(4)]
    for step, rows in enumerate(full):
        assert sum((shards[i][step] for i in range(4)), []) == rows
        assert all(len(shards[i][step]) == 2 for i in range(4))


def test_batches_no_shuffle_and_remainder():
    inputs, targets = _data(n=10)
    kept = [_rows(b) for b in tasks.batches(inputs, targets, batch_size=4, seed=0, shuffle=False,
                                             num_epochs=1, drop_remainder=False)]
    assert kept == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = [_rows(b) for b in tasks.batches(inputs, targets, batch_size=4, seed=0,
                                                shuffle=False, num_epochs=2)]
    assert dropped == [[0, 1, 2, 3], [4, 5, 6, 7]] * 2


def test_batches_of_a_loaded_setting():
    setting = {**tasks.settings("compression")[0], "num_train_examples": 256}
    x, y = tasks.load("compression", setting, "train", seed=0)
    batch = next(tasks.batches(x, y, batch_size=128, seed=0))
    assert batch["inputs"].shape == (128, 32)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 6, "shard_count": 4}, "multiple of shard_count"),
    ({"batch_size": 8, "shard_index": 4, "shard_count": 4}, r"shard_index must be in \[0, 4\)"),
    ({"batch_size": 80}, "batch_size must be <= the number of examples"),
    ({"batch_size": 8, "num_epochs": 0}, "num_epochs must be >= 1"),
    ({"batch_size": 8, "start_step": -1}, "start_step must be >= 0"),
    ({"batch_size": 12, "shard_count": 2, "drop_remainder": False}, "unequal rows"),
])
def test_batches_bad_arguments(kwargs, match):
    inputs, targets = _data()
    with pytest.raises(ValueError, match=match):
        tasks.batches(inputs, targets, seed=0, **kwargs)

"""Pretraining data: tokenizers, the tensorstore token store, corpus building, window sampling."""
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from mad_jax.scaling import corpus, tokenizer, window_source
from mad_jax.scaling.token_store import TokenStore, TokenStoreWriter

TEXTS = ["", "plain ascii", "é ü ß — naïve café", "日本語のテキスト", "emoji 🤖🧪",
         "tab\tnew\nline\r\n", "lone surrogate \ud800 kept", "\x00 nul and \x7f del"]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer_round_trip(text):
    tok = tokenizer.ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.size == 0 or (ids.min() >= 0 and ids.max() < 256)
    assert tok.decode(ids) == text
    assert tok.decode(np.append(ids, tok.eos_id)) == text  # end-of-document ids are dropped


def test_byte_tokenizer_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\[0, 256\]"):
        tokenizer.ByteTokenizer().decode([65, 300])


def test_json_tokenizer_without_package_names_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    path = tmp_path / "tok.json"
    path.write_text("{}")
    with pytest.raises(ImportError,
                       match=r"`tokenizers` package \(pip install tokenizers\)") as err:
        tokenizer.load_tokenizer(str(path))
    assert "tokenizer='byte'" in str(err.value)
    assert "\n" not in str(err.value)


def test_load_tokenizer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'byte' nor an existing JSON file"):
        tokenizer.load_tokenizer(str(tmp_path / "nope.json"))


def _write_store(path, docs, *, buffer_tokens=7):
    tok = tokenizer.ByteTokenizer()
    writer = TokenStoreWriter(str(path), tok, buffer_tokens=buffer_tokens)
    for text, split in docs:
        writer.add_text(text, split)
    return writer.close()


def test_token_store_write_read(tmp_path):
    docs = [("first doc", "train"), ("second, longer document", "train"),
            ("held out", "validation"), ("é" * 20, "train")]
    meta = _write_store(tmp_path / "store", docs)
    assert meta["num_documents"] == {"train": 3, "validation": 1}
    store = TokenStore.open(str(tmp_path / "store"))
    assert store.vocab_size == 257 and store.meta["dtype"] == "uint16"
    eos = store.tokenizer.eos_id
    expected = np.concatenate([np.append(store.tokenizer.encode(t), eos)
                               for t, s in docs if s == "train"])
    np.testing.assert_array_equal(store.load("train"), expected)
    np.testing.assert_array_equal(store.read("train", 3, 12), expected[3:12])
    assert store.tokenizer.decode(store.load("validation")) == "held out"
    assert store.num_tokens("train") == expected.size
    with pytest.raises(IndexError):
        store.read("train", 0, expected.size + 1)
    with pytest.raises(ValueError, match="unknown split"):
        store.num_tokens("test")
    # The zarr3 arrays are real zarr: metadata on disk names the format and the dtype.
    zarr_json = (tmp_path / "store" / "train" / "zarr.json").read_text().replace(" ", "")
    assert '"zarr_format":3' in zarr_json


def test_token_store_on_a_url():
    url = f"memory://{uuid.uuid4().hex}/store"
    docs = [("first doc", "train"), ("held out", "validation")]
    _write_store(url, docs)
    store = TokenStore.open(url)
    assert store.tokenizer.decode(store.load("train")) == "first doc"
    assert store.tokenizer.decode(store.load("validation")) == "held out"
    with pytest.raises(FileExistsError, match="already exists"):
        _write_store(url, docs)


def test_token_store_exists_overwrite_and_missing(tmp_path):
    _write_store(tmp_path / "s", [("a", "train"), ("b", "validation")])
    with pytest.raises(FileExistsError, match="already exists"):
        TokenStoreWriter(str(tmp_path / "s"), tokenizer.ByteTokenizer())
    writer = TokenStoreWriter(str(tmp_path / "s"), tokenizer.ByteTokenizer(), overwrite=True)
    writer.add_text("zz", "train")
    writer.add_text("y", "validation")
    writer.close()
    store = TokenStore.open(str(tmp_path / "s"))
    assert store.tokenizer.decode(store.load("train")) == "zz"
    with pytest.raises(FileNotFoundError, match=r"no token store at .*build_corpus"):
        TokenStore.open(str(tmp_path / "missing"))


def test_token_store_rejects_bad_ids(tmp_path):
    writer = TokenStoreWriter(str(tmp_path / "s"), tokenizer.ByteTokenizer())
    with pytest.raises(ValueError, match=r"\[0, 257\)"):
        writer.add_document([1, 2, 999])


def _text_dir(tmp_path, n=12):
    d = tmp_path / "texts"
    d.mkdir()
    for i in range(n):
        (d / f"doc{i:02d}.txt").write_text(f"document {i}\n" + "lorem ipsum " * (i + 3))
    return d


def test_build_corpus_deterministic_split(tmp_path):
    d = _text_dir(tmp_path)
    kwargs = dict(validation_fraction=0.25, seed=3, log=None)
    meta_a = corpus.build_corpus(str(tmp_path / "a"), str(d), **kwargs)
    meta_b = corpus.build_corpus(str(tmp_path / "b"), [str(d / "*.txt")], **kwargs)
    assert meta_a["num_tokens"] == meta_b["num_tokens"]
    assert meta_a["num_documents"]["validation"] >= 1 and meta_a["num_documents"]["train"] >= 1
    a, b = TokenStore.open(str(tmp_path / "a")), TokenStore.open(str(tmp_path / "b"))
    np.testing.assert_array_equal(a.load("train"), b.load("train"))
    with pytest.raises(FileNotFoundError, match="matches no text files"):
        corpus.build_corpus(str(tmp_path / "c"), str(tmp_path / "nothing*.txt"), log=None)


def test_stdlib_sources_are_there():
    files = corpus.stdlib_sources()
    assert len(files) > 100 and all(f.endswith(".py") for f in files)
    assert not any(os.sep + "test" + os.sep in f for f in files)


@pytest.fixture(scope="module")
def tokens():
    return np.arange(10_000, dtype=np.int32) % 251


def test_windows_are_deterministic_slices(tokens):
    src = window_source.WindowSource(tokens, seq_len=16, num_windows=100, seed=7)
    again = window_source.WindowSource(tokens, seq_len=16, num_windows=100, seed=7)
    other = window_source.WindowSource(tokens, seq_len=16, num_windows=100, seed=8)
    for i in range(100):
        w = src[i]
        start = src.start(i)
        assert w.shape == (17,) and 0 <= start <= tokens.size - 17
        np.testing.assert_array_equal(w, tokens[start:start + 17])
        np.testing.assert_array_equal(w, again[i])
    assert any(src.start(i) != other.start(i) for i in range(100))
    starts = window_source.window_starts(np.arange(20_000), seed=0, num_tokens=10_000, window=17)
    assert starts.min() >= 0 and starts.max() <= 10_000 - 17
    assert abs(starts.mean() / (10_000 - 17) - 0.5) < 0.02  # uniform over the valid starts


def test_window_source_reads_the_store_lazily(tmp_path):
    d = _text_dir(tmp_path, n=20)
    corpus.build_corpus(str(tmp_path / "s"), str(d), log=None)
    store = TokenStore.open(str(tmp_path / "s"))
    lazy = window_source.WindowSource(store, seq_len=8, num_windows=10, seed=1, in_memory=False)
    eager = window_source.WindowSource(store, seq_len=8, num_windows=10, seed=1, in_memory=True)
    for i in range(10):
        np.testing.assert_array_equal(lazy[i], eager[i])


@pytest.mark.parametrize("shards", [2, 4])
def test_host_shards_partition_the_global_batch(tokens, shards):
    kwargs = dict(seq_len=16, global_batch=8, num_steps=5, seed=3)
    whole = window_source.train_batches(tokens, shard_index=0, shard_count=1, **kwargs)
    parts = [window_source.train_batches(tokens, shard_index=i, shard_count=shards, **kwargs)
             for i in range(shards)]
    for _ in range(5):
        batch = next(whole)
        pieces = [next(p) for p in parts]
        assert all(p.shape == (8 // shards, 17) for p in pieces)
        got = sorted(map(bytes, np.concatenate(pieces)))
        assert got == sorted(map(bytes, batch))


def test_train_batches_position_is_checkpointable(tokens):
    kwargs = dict(seq_len=16, global_batch=4, num_steps=10, seed=0, shard_index=0, shard_count=1)
    it = window_source.train_batches(tokens, **kwargs)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    resumed = window_source.train_batches(tokens, **kwargs)
    resumed.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(next(resumed), e)
    with pytest.raises(ValueError, match="not divisible"):
        window_source.train_batches(tokens, seq_len=16, global_batch=5, num_steps=1, seed=0,
                                    shard_index=0, shard_count=2)


def test_eval_windows_and_short_splits(tokens):
    ev = window_source.eval_windows(tokens, seq_len=32, num_windows=10)
    assert ev.shape == (10, 33)
    np.testing.assert_array_equal(ev[0], tokens[:33])
    np.testing.assert_array_equal(ev[-1], tokens[-33:])
    with pytest.raises(ValueError, match="fewer than one window"):
        window_source.WindowSource(tokens[:10], seq_len=16, num_windows=1, seed=0)


def test_build_corpus_cli(tmp_path):
    d = _text_dir(tmp_path, n=4)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "experiments.build_corpus", *args], cwd=root,
                              env=env, capture_output=True, text=True, timeout=120)

    out = cli(f"--inputs={d}", f"--output={tmp_path / 'store'}")
    assert out.returncode == 0, out.stderr
    assert TokenStore.open(str(tmp_path / "store")).num_tokens("train") > 0
    bad = cli(f"--inputs={tmp_path}/none*", f"--output={tmp_path / 'x'}")

    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: corpus input")

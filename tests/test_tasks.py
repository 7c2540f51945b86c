"""Structure of every task, checked sequence by sequence against the reference's generators
(athms/mad-lab, mad/data/instances.py; DESIGN.md "The six tasks"), plus determinism, chunking and
statistics against the per-instance loops of the benchmark. The validation split is checked as the
test split it is made like."""
import hashlib

import numpy as np
import pytest

from benchmarks import task_generation
from mad_jax import tasks
from mad_jax.tasks import generation
from mad_jax.tasks.memorization import memorization_map

IGNORE = tasks.IGNORE_INDEX
SPLITS = ("train", "test")
ALL_SPLITS = ("train", "validation", "test")


def _scoring(split):
    """The split whose layout and targets `split` follows (validation is made as test)."""
    return "test" if split == "validation" else split


def _full_sequence(inputs, targets):
    """inputs plus the last token of the sequence (the recall tasks drop it from the inputs; it is
    the last target in both splits)."""
    return np.concatenate([inputs, targets[:, -1:]], axis=1)


# --- in-context recall and noisy in-context recall ----------------------------------------------

def check_recall(inputs, targets, split, vocab_size, seq_len, noise_vocab_size, frac_noise):
    V = vocab_size - noise_vocab_size
    K = V // 2
    assert inputs.shape[1] == targets.shape[1] == seq_len - 1
    seq = _full_sequence(inputs, targets)
    for row, tgt in zip(seq, targets):
        binding, expected = {}, np.full(seq_len, IGNORE)
        real_slots = 0
        for i in range(seq_len // 2):
            k, v = int(row[2 * i]), int(row[2 * i + 1])
            last = i == seq_len // 2 - 1
            if k >= V:  # a noise slot: two noise tokens
                assert not last and V <= v < vocab_size and k < vocab_size
                continue
            assert 0 <= k < K and K <= v < V, (k, v)
            if last:
                assert k in binding, "the final pair must re-present a key seen before"
            else:
                real_slots += 1
            if k in binding:
                assert binding[k] == v, "a key is bound to one value within a sequence"
                expected[2 * i + 1] = v
            binding[k] = v
        assert real_slots >= 1
        if split == "train":
            np.testing.assert_array_equal(tgt, row[1:])
        else:
            np.testing.assert_array_equal(tgt, expected[1:])
            assert tgt[-1] == row[-1]  # the probe value is always scored


@pytest.mark.parametrize("split", ALL_SPLITS)
@pytest.mark.parametrize("task,params", [
    ("in-context-recall", {}),
    ("in-context-recall", {"vocab_size": 128, "seq_len": 64}),
    ("in-context-recall", {"vocab_size": 200, "seq_len": 256}),  # 100 keys: two bit-set words
    ("noisy-in-context-recall", {}),
    ("noisy-in-context-recall", {"frac_noise": 0.8, "seq_len": 16}),
])
def test_recall_structure(task, params, split):
    p = tasks.resolve_params(task, params)
    inputs, targets = tasks.generate(task, num_examples=40, seed=3, split=split, **p)
    assert inputs.dtype == targets.dtype == np.int32
    check_recall(inputs, targets, _scoring(split), **p)


def test_noisy_recall_noise_rate():
    p = tasks.resolve_params("noisy-in-context-recall", {"frac_noise": 0.4})
    inputs, targets = tasks.generate("noisy-in-context-recall", num_examples=200, seed=0, **p)
    seq = _full_sequence(inputs, targets)
    body_keys = seq[:, 0:-2:2]
    frac = (body_keys >= p["vocab_size"] - p["noise_vocab_size"]).mean()
    # one slot per sequence is kept real: expected 0.4 * (N - 1) / N
    n = body_keys.shape[1]
    assert abs(frac - 0.4 * (n - 1) / n) < 0.02


# --- fuzzy in-context recall ----------------------------------------------------------------------

def parse_motif_pairs(row, num_keys, pad):
    """Splits a fuzzy-recall sequence (after its left padding) into (key, value, value_start)
    motifs: keys and values come from disjoint vocabularies, so runs delimit them."""
    start = int(np.argmax(row != pad))
    # the reference pads to seq_len + 1 and stops laying pairs early enough that >= 2 pads remain
    assert start >= 2 and (row[:start] == pad).all() and (row[start:] != pad).all()
    pairs, i = [], start
    while i < len(row):
        j = i
        while j < len(row) and row[j] < num_keys:
            j += 1
        m = j
        while m < len(row) and row[m] >= num_keys:
            m += 1
        assert j > i and m > j, "a pair is a key motif followed by a value motif"
        pairs.append((tuple(row[i:j]), tuple(row[j:m]), j))
        i = m
    return start, pairs


def check_fuzzy(inputs, targets, split, vocab_size, seq_len, k_motif_size, v_motif_size):
    """Per row: the reference's layout (seq_len + 1 tokens, the model sees seq_len), motif sizes
    and bindings, and the scored positions. Returns the fraction of rows whose final probe key
    appears in an earlier pair (the reference can skip the inner probe: not 1)."""
    pad, num_keys = vocab_size - 1, (vocab_size - 1) // 2
    assert inputs.shape[1] == targets.shape[1] == seq_len
    seq = _full_sequence(inputs, targets)
    assert seq.min() >= 0 and seq.max() <= pad
    inside = 0
    for row, tgt in zip(seq, targets):
        start, pairs = parse_motif_pairs(row, num_keys, pad)
        binding, expected = {}, np.full(seq_len + 1, IGNORE)
        for key, value, value_at in pairs:
            assert 1 <= len(key) <= k_motif_size and len(set(key)) == len(key)
            assert 1 <= len(value) <= v_motif_size and len(set(value)) == len(value)
            if split == "test":
                assert len(key) == k_motif_size
            if key in binding:
                assert binding[key] == value, "a key motif is bound to one value motif"
                expected[value_at:value_at + len(value)] = value
            binding[key] = value
        *body, final = pairs
        inside += final[0] in [k for k, _, _ in body]
        expected[final[2]:final[2] + len(final[1])] = final[1]  # the final value: always scored
        # pairs are laid down while the body is shorter than seq_len - len(probe) - max pair
        body_end = seq_len - len(final[0]) - len(final[1]) - k_motif_size - v_motif_size
        body_len = final[2] - len(final[0]) - start
        assert body_len - len(body[-1][0]) - len(body[-1][1]) < body_end <= body_len
        if split == "train":
            np.testing.assert_array_equal(tgt, row[1:])
        else:
            np.testing.assert_array_equal(tgt, expected[1:])
    return inside / len(seq)


@pytest.mark.parametrize("split", ALL_SPLITS)
@pytest.mark.parametrize("params", [
    {},
    {"vocab_size": 7, "seq_len": 18},  # smallest vocabulary and sequence for 3+3 motifs
    {"vocab_size": 64, "seq_len": 256, "k_motif_size": 2, "v_motif_size": 4},
    {"vocab_size": 32, "k_motif_size": 1, "v_motif_size": 1},
    {"vocab_size": 64, "seq_len": 60, "k_motif_size": 8, "v_motif_size": 2},  # ids by np.unique
])
def test_fuzzy_structure(params, split):
    p = tasks.resolve_params("fuzzy-in-context-recall", params)
    inputs, targets = tasks.generate("fuzzy-in-context-recall", num_examples=40, seed=5,
                                     split=split, **p)
    check_fuzzy(inputs, targets, _scoring(split), **p)


# Measured by running the reference's generator (athms/mad-lab, mad/data/instances.py, as its
# train.py calls it) for 6,000 sequences per split at the baseline: (mean, standard error) of the
# left padding of the seq_len + 1 tokens, of how many earlier pairs hold the final probe's key,
# and of the scored positions per test row; the fraction of rows whose final key appears earlier.
REFERENCE_FUZZY_BASELINE = {
    "train": {"pad": (5.312, 0.018), "probe_key_count": (1.352, 0.010),
              "probe_inside": (0.9825, 0.0017)},
    "test": {"pad": (4.926, 0.020), "probe_key_count": (1.029, 0.004),
             "probe_inside": (0.9775, 0.0019), "scored": (4.370, 0.030)},
}


@pytest.mark.parametrize("split", SPLITS)
def test_fuzzy_matches_reference_statistics(split):
    p = tasks.resolve_params("fuzzy-in-context-recall", {})
    inputs, targets = tasks.generate("fuzzy-in-context-recall", num_examples=2048, seed=11,
                                     split=split)
    counts = _probe_key_count(inputs, targets, p)
    ours = {"pad": np.argmax(inputs != p["vocab_size"] - 1, axis=1),
            "probe_key_count": counts, "probe_inside": counts > 0,
            "scored": (targets != IGNORE).sum(axis=1)}
    for name, (ref_mean, ref_se) in REFERENCE_FUZZY_BASELINE[split].items():
        mean, se = _mean_and_se(ours[name])
        assert abs(mean - ref_mean) < 5 * np.hypot(se, ref_se), (name, mean, ref_mean)


def test_fuzzy_second_draw_of_pairs(monkeypatch):
    """Rows that need more pairs than the first draw get them (forced here by a tiny first draw)."""
    from mad_jax.tasks import fuzzy_recall
    budget = fuzzy_recall._slot_budget
    monkeypatch.setattr(fuzzy_recall, "_slot_budget", lambda *a: (3, budget(*a)[1]))
    for split in SPLITS:
        p = tasks.resolve_params("fuzzy-in-context-recall", {})
        inputs, targets = tasks.generate("fuzzy-in-context-recall", num_examples=20, seed=1,
                                         split=split)
        check_fuzzy(inputs, targets, split, **p)


# --- selective copying, compression, memorization ------------------------------------------------

@pytest.mark.parametrize("split", ALL_SPLITS)
@pytest.mark.parametrize("params", [{}, {"seq_len": 34, "num_tokens_to_copy": 16},
                                    {"vocab_size": 3, "seq_len": 12, "num_tokens_to_copy": 2}])
def test_selective_copying_structure(params, split):
    p = tasks.resolve_params("selective-copying", params)
    V, L, n = p["vocab_size"], p["seq_len"], p["num_tokens_to_copy"]
    # vocab 3 leaves one token to copy: 8 possible sequences, so a validation split beside a
    # test split of only 2 rows
    inputs, targets = tasks.generate("selective-copying", num_examples=40, seed=2, split=split,
                                     num_test_examples=2 if V == 3 else 1280, **p)
    assert inputs.shape == targets.shape == (40, L)
    blank, copy = V - 2, V - 1
    for row, tgt in zip(inputs, targets):
        assert row[L - n - 1] == copy and (row[L - n:] == blank).all()
        head = row[:L - n - 1]
        assert (head != copy).all()
        tokens = head[head != blank]
        assert len(tokens) == n and tokens.max() < V - 2
        assert head[-1] != blank, "the last token to copy sits right before the copy token"
        assert (tgt[:L - n] == IGNORE).all()
        np.testing.assert_array_equal(tgt[L - n:], tokens)


@pytest.mark.parametrize("split", ALL_SPLITS)
def test_compression_structure(split):
    inputs, targets = tasks.generate("compression", num_examples=40, seed=0, split=split,
                                     vocab_size=32, seq_len=64)
    assert inputs.shape == (40, 64)
    assert (inputs[:, -1] == 31).all() and inputs[:, :-1].max() < 31 and inputs.min() >= 0
    np.testing.assert_array_equal(targets, inputs)
    assert tasks.TASK_BACKBONE["compression"] == "autoencoder"
    assert {tasks.TASK_BACKBONE[t] for t in tasks.TASKS if t != "compression"} == {"language-model"}


@pytest.mark.parametrize("vocab_size", [3, 256, 1024])
def test_memorization_structure_and_shared_map(vocab_size):
    num_keys = (vocab_size - 1) // 2
    value_of = memorization_map(vocab_size, 7)
    assert len(value_of) == num_keys and len(set(value_of.tolist())) == num_keys  # injective
    assert value_of.min() >= num_keys and value_of.max() < vocab_size - 1
    seen = {}
    # one key makes one possible sequence: the test split holds it, none is left for validation
    for split in ALL_SPLITS if num_keys > 1 else SPLITS:
        # 1100 rows: two chunks, so the map is shared across chunks and splits
        inputs, targets = tasks.generate("memorization", num_examples=1100, seed=7, split=split,
                                         vocab_size=vocab_size, seq_len=8)
        assert (inputs[:, 1::2] == vocab_size - 1).all() and (targets[:, 0::2] == IGNORE).all()
        keys, values = inputs[:, 0::2].ravel(), targets[:, 1::2].ravel()
        assert keys.max() < num_keys
        np.testing.assert_array_equal(values, value_of[keys])
        for k, v in zip(keys.tolist(), values.tolist()):
            assert seen.setdefault(k, v) == v
    assert not np.array_equal(memorization_map(vocab_size, 8), value_of) or num_keys == 1


# --- determinism ----------------------------------------------------------------------------------

# sha256 (first 16 hex digits) of inputs+targets for generate(task, num_examples=4, seed=0):
# any change to the streams or the layout shows up here. Same on every machine for the pinned numpy.
GOLDEN = {
    ("in-context-recall", "train"): "e8a4fab957bc287e",
    ("in-context-recall", "test"): "5775943ec97b1c4f",
    ("noisy-in-context-recall", "train"): "344d18c416ab6433",
    ("noisy-in-context-recall", "test"): "504e99beebf3f675",
    ("fuzzy-in-context-recall", "train"): "dc4f77408983ccf5",
    ("fuzzy-in-context-recall", "test"): "43f3da8e934784fe",
    ("selective-copying", "train"): "7e42fc532de47362",
    ("selective-copying", "test"): "39d098ebb9c5e51f",
    ("compression", "train"): "0d036ea202eb7ed3",
    ("compression", "test"): "e542c5fd525c6489",
    ("memorization", "train"): "2f76463ba4b4b07b",
    ("memorization", "test"): "afd446fd60216179",
    ("in-context-recall", "validation"): "cec184078e40f4bb",
    ("noisy-in-context-recall", "validation"): "bf26fc1941b2ff53",
    ("fuzzy-in-context-recall", "validation"): "f3c173b5b99077c8",
    ("selective-copying", "validation"): "628c0a40d01274a5",
    ("compression", "validation"): "595effc551ae2af3",
    ("memorization", "validation"): "cb6ba2389a436391",
}


@pytest.mark.parametrize("task", tasks.TASKS)
def test_golden_arrays(task):
    for split in ALL_SPLITS:
        inputs, targets = tasks.generate(task, num_examples=4, seed=0, split=split)
        digest = hashlib.sha256(inputs.tobytes() + targets.tobytes()).hexdigest()[:16]
        assert digest == GOLDEN[task, split], (task, split)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_determinism_splits_seeds_and_prefixes(task):
    gen = lambda n, seed=0, split="train": tasks.generate(task, num_examples=n, seed=seed,
                                                         split=split)
    a, b = gen(1100), gen(1100)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], gen(1100, seed=1)[0])
    test = gen(1100, split="test")
    assert not np.array_equal(a[0], test[0]), "train and test never share a stream"
    for n in (0, 1, 10, 1024, 1025):  # a smaller data set is a prefix of a larger one
        np.testing.assert_array_equal(gen(n)[0], a[0][:n])
        np.testing.assert_array_equal(gen(n)[1], a[1][:n])


@pytest.mark.parametrize("seq_len", [16, 1024])
def test_chunks_are_independent_of_who_makes_them(seq_len):
    task = "in-context-recall"
    p = tasks.resolve_params(task, {"seq_len": seq_len})
    rows = generation.chunk_rows(seq_len - 1)
    assert rows == (1024 if seq_len == 16 else 256)
    inputs, targets = tasks.generate(task, num_examples=2 * rows + 5, seed=9, split="test", **p)
    x, y = generation.generate_chunk(task, p, "test", 9, chunk=2)  # e.g. another host
    np.testing.assert_array_equal(x[:5], inputs[2 * rows:])
    np.testing.assert_array_equal(y[:5], targets[2 * rows:])
    x, y = generation.generate_chunk(task, p, "test", 9, chunk=1)
    np.testing.assert_array_equal(x, inputs[rows:2 * rows])


def test_settings_dicts_pass_to_generate():
    for task in tasks.TASKS:
        setting = tasks.settings(task)[0]
        params = {k: v for k, v in setting.items() if not k.startswith("num_")}
        a = tasks.generate(task, num_examples=3, seed=1, **setting)
        b = tasks.generate(task, num_examples=3, seed=1, **params)
        np.testing.assert_array_equal(a[0], b[0])


def test_generated_data_differ_between_sequences():
    inputs, _ = tasks.generate("in-context-recall", num_examples=64, seed=0)
    assert len({row.tobytes() for row in inputs}) == 64


# --- statistics against the per-instance loops of the benchmark ----------------------------------

def _mean_and_se(values):
    values = np.asarray(values, float)
    return values.mean(), values.std() / np.sqrt(len(values))


def _probe_key_count(inputs, targets, p):
    """Per row: how many earlier pairs have the final probe's key motif."""
    pad, num_keys = p["vocab_size"] - 1, (p["vocab_size"] - 1) // 2
    counts = []
    for row in _full_sequence(inputs, targets):
        _, pairs = parse_motif_pairs(row, num_keys, pad)
        counts.append(sum(key == pairs[-1][0] for key, _, _ in pairs[:-1]))
    return np.array(counts)


@pytest.mark.parametrize("task,params,stat,split", [
    ("in-context-recall", {"seq_len": 64}, "scored", "test"),
    ("noisy-in-context-recall", {"seq_len": 64, "frac_noise": 0.6}, "scored", "test"),
    ("fuzzy-in-context-recall", {}, "scored", "test"),
    ("fuzzy-in-context-recall", {}, "pad", "test"),
    # the probe is not inserted where its key appeared before it by chance (frequent in train,
    # where a one-token key repeats often) or where no pair starts past its offset
    ("fuzzy-in-context-recall", {}, "probe_key_count", "train"),
    ("fuzzy-in-context-recall", {"seq_len": 36}, "probe_key_count", "test"),
    ("selective-copying", {"seq_len": 64}, "first_token", "test"),
])
def test_same_distribution_as_per_instance_loop(task, params, stat, split):
    """The vectorised generator and the benchmark's straightforward loop implement the same
    law: compare a summary statistic (means within 5 standard errors)."""
    p = tasks.resolve_params(task, params)
    vec = tasks.generate(task, num_examples=1024, seed=0, split=split, **p)
    loop = task_generation.loop_generate(task, 400, 0, split, **p)

    def statistic(inputs, targets):
        if stat == "scored":
            return (targets != IGNORE).sum(axis=1)
        if stat == "pad":
            return (inputs == p["vocab_size"] - 1).sum(axis=1)
        if stat == "probe_key_count":
            return _probe_key_count(inputs, targets, p)
        return np.argmax(inputs != p["vocab_size"] - 2, axis=1)

    m1, se1 = _mean_and_se(statistic(*vec))
    m2, se2 = _mean_and_se(statistic(*loop))
    assert abs(m1 - m2) < 5 * np.hypot(se1, se2), (m1, m2)
    for arrays in (vec, loop):  # and both pass the structural checks
        if task == "fuzzy-in-context-recall":
            check_fuzzy(arrays[0][:50], arrays[1][:50], split, **p)
        elif "recall" in task:
            check_recall(arrays[0][:50], arrays[1][:50], split, **p)


# --- decode ---------------------------------------------------------------------------------------

def test_decode_marks_special_tokens():
    x, y = tasks.generate("selective-copying", num_examples=1, seed=0, seq_len=12,
                          num_tokens_to_copy=2)
    text = tasks.decode("selective-copying", x[0], 16)
    assert text.split()[-3] == "<copy>" and text.split()[-1] == "_"
    assert tasks.decode("selective-copying", y[0], 16).split()[0] == "."
    x, _ = tasks.generate("noisy-in-context-recall", num_examples=1, seed=0, frac_noise=0.8)
    labels = tasks.decode("noisy-in-context-recall", x[0], 32, noise_vocab_size=16).split()
    assert {label[0] for label in labels} == {"k", "v", "n"}
    x, _ = tasks.generate("fuzzy-in-context-recall", num_examples=1, seed=0)
    assert tasks.decode("fuzzy-in-context-recall", x[0], 16).startswith("_")
    x, _ = tasks.generate("memorization", num_examples=1, seed=0)
    assert tasks.decode("memorization", x[0], 256).split()[1] == "<ins>"
    x, _ = tasks.generate("compression", num_examples=1, seed=0)
    assert tasks.decode("compression", x[0], 16).endswith("<compress>")
    with pytest.raises(ValueError, match="1-D"):
        tasks.decode("compression", x, 16)

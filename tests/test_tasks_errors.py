"""Bad input: a ValueError naming the parameter and its valid range."""
import pytest

from mad_jax import tasks


def gen(task, **params):
    return tasks.generate(task, num_examples=2, seed=0, **params)


@pytest.mark.parametrize("task", ["in-context-recall", "noisy-in-context-recall",
                                  "fuzzy-in-context-recall"])
def test_odd_seq_len_for_recall(task):
    with pytest.raises(ValueError, match=r"seq_len must be even.*got 127"):
        gen(task, seq_len=127)


@pytest.mark.parametrize("task,params,match", [
    ("in-context-recall", {"vocab_size": 1}, r"vocab_size must be >= 2 .*got 1"),
    ("noisy-in-context-recall", {"vocab_size": 17},
     r"vocab_size must be >= 18 .*noise_vocab_size=16"),
    ("fuzzy-in-context-recall", {"vocab_size": 6}, r"vocab_size must be >= 7 .*k_motif_size=3"),
    ("fuzzy-in-context-recall", {"vocab_size": 16, "v_motif_size": 9},
     r"vocab_size must be >= 18"),
    ("selective-copying", {"vocab_size": 2}, r"vocab_size must be >= 3"),
    ("compression", {"vocab_size": 1}, r"vocab_size must be >= 2"),
    ("memorization", {"vocab_size": 2}, r"vocab_size must be >= 3"),
])
def test_vocab_too_small(task, params, match):
    with pytest.raises(ValueError, match=match):
        gen(task, **params)


@pytest.mark.parametrize("frac", [-0.1, 1.0, 1.5])
def test_frac_noise_outside_unit_interval(frac):
    with pytest.raises(ValueError, match=r"frac_noise must be in \[0, 1\)"):
        gen("noisy-in-context-recall", frac_noise=frac)


def test_noise_needs_noise_tokens():
    with pytest.raises(ValueError, match="noise_vocab_size must be >= 1 when frac_noise > 0"):
        gen("in-context-recall", frac_noise=0.5)


@pytest.mark.parametrize("n,seq_len", [(128, 256), (16, 33), (0, 256)])
def test_num_tokens_to_copy_too_large_or_small(n, seq_len):
    with pytest.raises(ValueError, match=r"num_tokens_to_copy must be"):
        gen("selective-copying", num_tokens_to_copy=n, seq_len=seq_len)


def test_num_tokens_to_copy_message_gives_range():
    with pytest.raises(ValueError, match=r"num_tokens_to_copy must be in \[1, 127\]"):
        gen("selective-copying", num_tokens_to_copy=200)


def test_fuzzy_seq_len_too_short_for_motifs():
    with pytest.raises(ValueError, match=r"seq_len must be >= 18"):
        gen("fuzzy-in-context-recall", seq_len=16)


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'recall'; valid tasks: in-context-recall, "
                                         "noisy-in-context-recall, .*memorization"):
        gen("recall")
    for fn in (tasks.settings, lambda t: tasks.load(t, {}, "train", seed=0)):
        with pytest.raises(ValueError, match="unknown task"):
            fn("recall")


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['seqlen'\].*seq_len"):
        gen("compression", seqlen=32)
    with pytest.raises(ValueError, match="unknown parameter"):
        gen("compression", frac_noise=0.1)  # compression has no noise


@pytest.mark.parametrize("params,match", [
    ({"seq_len": 12.5}, "seq_len must be an integer"),
    ({"seq_len": "128"}, "seq_len must be an integer"),
    ({"vocab_size": True}, "vocab_size must be an integer"),
])
def test_wrong_types(params, match):
    with pytest.raises(ValueError, match=match):
        gen("in-context-recall", **params)


def test_integral_floats_are_accepted():
    a = gen("compression", seq_len=32.0)[0]
    b = gen("compression", seq_len=32)[0]
    assert (a == b).all()


@pytest.mark.parametrize("kwargs,match", [
    ({"seed": -1}, "seed must be >= 0"),
    ({"num_examples": -3}, "num_examples must be >= 0"),
    ({"split": "valid"}, r"split must be one of \('train', 'validation', 'test'\)"),
])
def test_bad_generate_arguments(kwargs, match):
    args = {"num_examples": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        tasks.generate("compression", **args)


def test_bad_load_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        tasks.load("compression", {}, "val", seed=0)
    with pytest.raises(ValueError, match="num_train_examples must be >= 0"):
        tasks.load("compression", {"num_train_examples": -1}, "train", seed=0)
    with pytest.raises(ValueError, match="num_validation_examples must be >= 0"):
        tasks.load("compression", {"num_validation_examples": -1}, "validation", seed=0)


def test_validation_split_of_a_too_small_setting():
    # compression with vocab 2, seq_len 2 has one sequence: the test split already holds it
    with pytest.raises(ValueError, match=r"only 0 of 4 validation sequences differ from the 3 "
                                         r"test sequences .* too few distinct sequences"):
        tasks.generate("compression", num_examples=4, seed=0, split="validation", vocab_size=2,
                       seq_len=2, num_test_examples=3)

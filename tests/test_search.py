"""The architecture search without training: genomes, spaces, budgets, NSGA-II, variation, and
the search loop with a cheap evaluator computed from the genome (determinism, dedup, resume,
constraints, bad input, the report, the config file)."""
import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mad_jax import models, search
from mad_jax.search import nsga, variation
from mad_jax.search.genome import Genome
from mad_jax.search.space import SearchSpace

DIM = 32
# Few config combinations: each one costs one eval_shape when its parameters are counted.
CHOICES = ("mh-attention.num_heads=2/4,mamba.d_state=4/8,hyena.filter_order=4/8,"
           "swiglu.hidden_dim=none/64")
SMALL = dict(mixers="mh-attention,mamba,hyena", channels="swiglu", min_blocks=1, max_blocks=3,
             choices=CHOICES, dim=DIM, population=4, generations=2,
             baseline="hyena swiglu mh-attention swiglu [mh-attention num_heads=4]")


class FakeEvaluator:
    """A score computed from the genome (attention helps, configs nudge it); counts its calls.
    `fail_at`: the call number that raises, as a killed process would stop."""

    identity = {"evaluator": "fake", "version": 1}

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, genome, out_dir):
        if self.fail_at is not None and len(self.calls) + 1 == self.fail_at:
            raise KeyboardInterrupt("killed")
        self.calls.append(genome.key)
        attention = sum(layer == "mh-attention" for layer in genome.layers)
        nudge = sum(len(str(v)) for _, values in genome.configs for _, v in values) / 100
        return {"score": min(1.0, 0.2 + 0.3 * attention + nudge), "tasks": {"fake": 0.5}}


class DeviceRecordingEvaluator(FakeEvaluator):
    """The fake score, plus where each call ran: the default device, the device an array lands
    on, the device of the training loop's one-device mesh; and the most calls at once.
    `fail_on`: a genome key whose evaluation raises RuntimeError."""

    def __init__(self, fail_on=None, wait_s=0.02):
        super().__init__()
        self.fail_on, self.wait_s = fail_on, wait_s
        self.placements, self.running, self.most_at_once = [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, genome, out_dir):
        from mad_jax.training.loop import make_partitioner

        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.wait_s)  # long enough for the other workers to start
            mesh = make_partitioner("", group_size=1, batch_sizes={}).mesh
            self.placements.append((jax.config.jax_default_device,
                                    next(iter(jnp.zeros(()).devices())), mesh.devices.flat[0]))
            if genome.key == self.fail_on:
                raise RuntimeError(f"evaluation of {genome.key} failed")
            return super().__call__(genome, out_dir)
        finally:
            with self.lock:
                self.running -= 1


def run_small(workdir, evaluate, **kw):
    return search.run(str(workdir), preset=None, evaluate=evaluate, report=kw.pop("report", False),
                      log=kw.pop("log", lambda s: None), **{**SMALL, **kw})


# --- genomes and spaces ---

def test_genome_canonical_form_key_and_label():
    a = Genome.make("mamba swiglu mh-attention swiglu",
                    {"mh-attention": {"num_heads": 4}, "mamba": {"d_state": 4},  # 4 = default
                     "hyena": {"filter_order": 8}})                               # not used
    assert a.configs == (("mh-attention", (("num_heads", 4),)),)
    assert a.layer_configs == {"mh-attention": {"num_heads": 4}}
    assert a.key == Genome.make(["mamba", "swiglu", "mh-attention", "swiglu"],
                                {"mh-attention": {"num_heads": 4}}).key
    assert a.key != Genome.make("mamba swiglu mh-attention swiglu").key
    assert a.label == "mamba swiglu mh-attention swiglu [mh-attention num_heads=4]"
    assert Genome.parse(a.label) == a and Genome.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert a.blocks == [("mamba", "swiglu"), ("mh-attention", "swiglu")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(mixers=(), channels=("swiglu",)), "has no mixers"),
    (dict(mixers=("nope",), channels=("swiglu",)), "unknown layer(s) 'nope' in mixers"),
    (dict(mixers=("mamba",), channels=("swiglu",), min_blocks=3, max_blocks=2), "min_blocks 3 >"),
    (dict(mixers=("mamba",), channels=("swiglu",), choices={"hyena": {"order": (2,)}}),
     "choices name 'hyena'"),
    (dict(mixers=("mamba",), channels=("swiglu",), choices={"mamba": {"heads": (2,)}}),
     "'heads' is not a field of Mamba"),
    (dict(mixers=("mamba",), channels=("swiglu",), choices={"mamba": {"d_state": ()}}),
     "needs a non-empty list"),
])
def test_bad_search_spaces_are_one_line_errors(kwargs, message):
    with pytest.raises(search.SearchError) as e:
        SearchSpace(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_register_search_space_checks_the_layer_and_its_fields():
    with pytest.raises(search.SearchError, match="'window' is not a field of Mamba"):
        search.register_search_space("mamba", {"window": (8,)}, overwrite=True)
    with pytest.raises(search.SearchError, match="unknown layer 'my-mixer'"):
        search.register_search_space("my-mixer", {"num_heads": (2,)})
    with pytest.raises(search.SearchError, match="already has a search space"):
        search.register_search_space("mamba", {"d_state": (4,)})
    assert dict(search.SEARCH_SPACES["mamba"]) == {"d_state": (4, 8, 16), "expand": (1, 2)}


def test_every_built_in_choice_is_a_field_of_its_layer():
    from mad_jax.layers import LAYERS

    for layer, table in search.SEARCH_SPACES.items():
        for field, values in table:
            assert field in LAYERS[layer].module.__dataclass_fields__, (layer, field)
            assert values


def test_mutation_and_crossover_stay_in_the_space():
    space = SearchSpace(("mh-attention", "mamba", "hyena"), ("swiglu", "mlp"), max_blocks=3,
                        choices={"mamba": {"d_state": (4, 8)}})
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(60):
        a, b = space.sample(rng), space.sample(rng)
        assert space.contains(a)
        child = variation.mutate(a, space, rng)
        assert space.contains(child) and child != a
        kinds.add(len(child.blocks) - len(a.blocks))
        cross = variation.crossover(a, b, space, rng)
        assert space.contains(cross)
        assert all(block in a.blocks + b.blocks for block in cross.blocks)
    assert kinds == {-1, 0, 1}  # deletions, swaps / config changes, insertions


# --- NSGA-II ---

def test_non_dominated_sort_crowding_and_selection():
    obj = np.array([[0, 3], [1, 1], [3, 0], [2, 2], [4, 4], [1, 1]], float)
    assert nsga.non_dominated_sort(obj) == [[0, 1, 2, 5], [3], [4]]
    distance = nsga.crowding_distance(obj[[0, 1, 2]])
    assert np.isinf(distance[0]) and np.isinf(distance[2]) and distance[1] == pytest.approx(2.0)
    assert nsga.select(obj, 5) == [0, 1, 2, 5, 3]
    assert sorted(nsga.select(obj, 3)[:2]) == [0, 2]  # the extremes of the front first
    rank, crowding = nsga.rank_and_crowding(obj)
    assert list(rank) == [0, 0, 0, 1, 2, 0]


# --- budgets ---

def test_costs_match_the_built_model():
    budget = search.Budget(dim=DIM)
    for genome in (Genome.parse("hyena swiglu mh-attention swiglu [mh-attention num_heads=4]"),
                   Genome.parse("mamba swiglu mamba mlp [mamba d_state=8]")):
        model = models.build(genome.layers, vocab_size=16, max_length=128, dim=DIM,
                             layer_configs=genome.layer_configs)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 128), jnp.int32))
        costs = budget.costs(genome)
        assert costs.params == models.count_params(shapes["params"])
        assert costs.state == models.state_size(genome.layers, dim=DIM, seq_len=128,
                                                layer_configs=genome.layer_configs)
        assert costs.flops == models.flops(genome.layers, dim=DIM, seq_len=128, vocab_size=16,
                                           layer_configs=genome.layer_configs)
    costs, why = budget.check(Genome.parse("mh-attention swiglu"))  # 16 heads of width 2
    assert costs is None and why.startswith("does not build: rotary_dim")
    attention = Genome.parse("mh-attention swiglu [mh-attention num_heads=4]")
    assert search.Budget(max_state=100, dim=DIM).check(attention)[1] == ("state 8,192 > "
                                                                          "max_state 100")


@pytest.mark.parametrize("fields, message", [
    (dict(max_params=1_000), "no genome of 200 drawn from the search space meets the budgets"),
    (dict(mixers="mh-attention", choices="mh-attention.num_heads=16"), "builds at width 32"),
    (dict(baseline="hyena swiglu nope swiglu"), "baseline 'hyena swiglu nope swiglu': unknown"),
    (dict(mixers="mamba,nope"), "unknown layer(s) 'nope' in mixers"),
    (dict(choices="mamba.d_state"), "choices must look like"),
    (dict(parallel=9), "parallel=9 trains each genome on its own device, but this process has 8"),
    (dict(parallel="many"), "parallel must be an integer >= 0 or 'auto', got 'many'"),
    (dict(parallel=2, train={"mesh": "auto"}), "leave train.mesh empty"),
])
def test_bad_input_stops_before_any_evaluation(tmp_path, fields, message):
    evaluate = FakeEvaluator()
    with pytest.raises(search.SearchError) as e:
        run_small(tmp_path, evaluate, **fields)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert evaluate.calls == [] and not os.path.exists(tmp_path / "search.json")


# --- the search loop ---

def history(workdir):
    with open(os.path.join(workdir, "search.json")) as f:
        return [h["population"] for h in json.load(f)["history"]]


def test_same_seed_same_history_and_every_genome_within_budget(tmp_path):
    budget = dict(max_params=60_000, max_state=20_000)
    first, again, other = FakeEvaluator(), FakeEvaluator(), FakeEvaluator()
    result = run_small(tmp_path / "a", first, report=True, **budget)
    run_small(tmp_path / "b", again, **budget)
    run_small(tmp_path / "c", other, seed=1, **budget)
    assert history(tmp_path / "a") == history(tmp_path / "b") != history(tmp_path / "c")
    assert first.calls == again.calls
    assert len(history(tmp_path / "a")) == 3 and all(len(p) == 4 for p in history(tmp_path / "a"))
    limits = search.Budget(dim=DIM, **budget)
    for record in result.records.values():
        if record["key"] != result.baseline:
            assert not limits.violations(search.Costs(**record["costs"]))
    # the report: the front, the baseline against it, the generations, the plots
    text = (tmp_path / "a" / "report.md").read_text()
    for heading in ("## Pareto front", "## The default hybrid", "## Best per generation"):
        assert heading in text
    assert "NOT MAD scores" in text
    for png in ("pareto_state.png", "pareto_params.png", "best_per_generation.png"):
        assert (tmp_path / "a" / "plots" / png).stat().st_size > 1000
    assert set(result.front) <= {k for h in result.history for k in h["offspring"]}


def test_a_genome_is_evaluated_once_and_a_second_run_evaluates_nothing(tmp_path):
    evaluate = FakeEvaluator()
    first = run_small(tmp_path, evaluate)
    assert len(evaluate.calls) == len(set(evaluate.calls)) == len(first.records)
    assert first.evaluator_calls == len(first.records)
    messages = []
    second = run_small(tmp_path, evaluate, log=messages.append)
    assert len(evaluate.calls) == len(first.records) and second.evaluator_calls == 0
    assert second.front == first.front and second.history == first.history
    assert any("nothing to train" in m for m in messages)
    assert all("stored, skipped" in m for m in messages if "evaluation" in m and "[" in m)


def test_a_killed_search_resumes_to_the_same_history(tmp_path):
    whole = FakeEvaluator()
    run_small(tmp_path / "whole", whole, generations=3)
    killed = FakeEvaluator(fail_at=9)  # in the middle of generation 1
    with pytest.raises(KeyboardInterrupt):
        run_small(tmp_path / "killed", killed, generations=3)
    assert len(history(tmp_path / "killed")) == 1   # generation 0 was written
    resumed = FakeEvaluator()
    run_small(tmp_path / "killed", resumed, generations=3)
    assert history(tmp_path / "killed") == history(tmp_path / "whole")
    assert killed.calls + resumed.calls == whole.calls  # nothing evaluated twice
    # more generations later: the history goes on from where it stopped
    more = FakeEvaluator()
    run_small(tmp_path / "killed", more, generations=4)
    assert history(tmp_path / "killed")[:4] == history(tmp_path / "whole")
    assert len(history(tmp_path / "killed")) == 5 and len(more.calls) == 4


def stored(workdir):
    """What a search wrote: search.json without its timestamps, and every genome.json."""
    with open(os.path.join(workdir, "search.json")) as f:
        state = json.load(f)
    for entry in state["history"]:
        entry.pop("finished_at")
    records = {}
    for key in os.listdir(os.path.join(workdir, "genomes")):
        path = os.path.join(workdir, "genomes", key, "genome.json")
        if os.path.exists(path):
            with open(path) as f:
                records[key] = json.load(f)
    return state, records


def progress_lines(messages):
    """The search's per-genome lines up to their timing: where, which genome, score, costs."""
    return [m.split(" (")[0] for m in messages if m.startswith("[")]


def test_parallel_search_writes_what_the_sequential_one_writes(tmp_path):
    sequential, parallel = FakeEvaluator(), DeviceRecordingEvaluator()
    logs = {"seq": [], "par": []}
    one = run_small(tmp_path / "seq", sequential, log=logs["seq"].append)
    four = run_small(tmp_path / "par", parallel, parallel=4, log=logs["par"].append)
    assert history(tmp_path / "par") == history(tmp_path / "seq")
    assert four.records == one.records and four.history[0]["best"] == one.history[0]["best"]
    assert stored(tmp_path / "par") == stored(tmp_path / "seq")
    assert progress_lines(logs["par"]) == progress_lines(logs["seq"])
    assert sorted(parallel.calls) == sorted(sequential.calls)  # each genome once
    # every call trained on its own default device, the one-device mesh included
    workers = jax.local_devices()[:4]
    assert all(default == placed == meshed and default in workers
               for default, placed, meshed in parallel.placements)
    assert len({p[0] for p in parallel.placements}) == 4 and parallel.most_at_once > 1
    assert jax.config.jax_default_device is None
    # resumed with parallel=1: everything is stored already
    again = FakeEvaluator()
    assert run_small(tmp_path / "par", again).evaluator_calls == 0 and again.calls == []


def test_a_failing_parallel_evaluation_stops_the_search_like_a_sequential_one(tmp_path):
    whole = FakeEvaluator()
    run_small(tmp_path / "whole", whole)
    gen1 = whole.calls[5:9]  # the baseline and 4 genomes, then generation 1's offspring
    failing = gen1[1]
    for name, parallel in (("seq", 1), ("par", 4)):
        with pytest.raises(RuntimeError, match=f"evaluation of {failing} failed"):
            run_small(tmp_path / name, DeviceRecordingEvaluator(fail_on=failing, wait_s=0),
                      parallel=parallel)
        assert len(history(tmp_path / name)) == 1  # generation 0 only
    # sequentially, what came before; in parallel, the other running workers' genomes too
    assert set(stored(tmp_path / "seq")[1]) == set(whole.calls[:6])
    assert set(stored(tmp_path / "par")[1]) == set(whole.calls[:9]) - {failing}
    for name in ("seq", "par"):  # resumed in parallel: the same search, nothing trained twice
        before, resumed = set(stored(tmp_path / name)[1]), FakeEvaluator()
        run_small(tmp_path / name, resumed, parallel=4)
        assert stored(tmp_path / name) == stored(tmp_path / "whole")
        assert failing in resumed.calls and not before & set(resumed.calls)


def test_a_workdir_holding_another_search_is_refused(tmp_path):
    run_small(tmp_path, FakeEvaluator(), generations=0)
    evaluate = FakeEvaluator()
    with pytest.raises(search.SearchError, match="holds another search.*population: 4 -> 3"):
        run_small(tmp_path, evaluate, population=3)
    assert evaluate.calls == []


# --- the config file ---

def test_config_file_and_run_from_config(tmp_path, capsys):
    from experiments.configs import search as search_config

    config = search_config.get_config(
        f"cpu,population=3,parallel=2,workdir={tmp_path},print_config=true")
    assert search.run_from_config(config) == 0
    printed = capsys.readouterr().out
    assert "population: 3" in printed and "generations: 2" in printed
    assert "parallel: 2\n" in printed
    config = search_config.get_config(f"preset=cpu,mixers=mamba,nope,workdir={tmp_path}")
    assert search.run_from_config(config) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown layer(s) 'nope' in mixers") and "\n" not in err
    config = search_config.get_config(f"preset=cpu,workdir={tmp_path}")
    config.train.train_epochs = 1.0  # a budget given one way replaces the preset's steps
    fields = search.command.config_fields(config)[2]
    assert fields["train"]["train_epochs"] == 1.0 and "train_steps" not in fields["train"]
    assert not os.listdir(tmp_path)

"""`run`: the search loop. A first population drawn from the space, then per generation as many
offspring (tournament, crossover, mutation), their evaluation, and NSGA-II selection of the next
population from parents and offspring, on three objectives: the MAD proxy score (maximised),
state size and parameters (minimised).

Reproducible: generation g draws from its own numpy stream, seeded by (seed, g), and nothing
else draws; evaluations draw nothing. So a seed fixes the population history (given the
scores), and a resumed search redraws a killed generation exactly.

Resumable: the search state is written after every generation and each genome's record as soon
as its evaluation finishes (`store.py`), so a killed search, run again, reads back what finished
and goes on; a finished one trains nothing and writes its report again.

Parallel (`parallel` > 1): a generation's genomes not stored yet train at once, each on its own
local device (`parallel.py`); their records are written and logged here, in the order and with
the contents of a sequential search. An evaluation that raises stops the search as it does
sequentially, once the evaluations already running have finished and been stored.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Callable

import numpy as np

from mad_jax import storage
from mad_jax.search import constraints, nsga, parallel, presets, report as report_lib, variation
from mad_jax.search.constraints import Budget
from mad_jax.search.errors import SearchError
from mad_jax.search.evaluate import ProtocolEvaluator
from mad_jax.search.genome import Genome
from mad_jax.search.space import SearchSpace, parse_choices
from mad_jax.search.store import FORMAT, SearchStore, identity_key

FEASIBILITY_TRIES = 200   # genomes drawn to show the budgets leave something to search
Evaluator = Callable[[Genome, str], dict]


@dataclasses.dataclass
class SearchResult:
    """population: the last generation's genomes. records: genome key -> its genome.json
    record (genome, costs, evaluation) for every genome evaluated, the baseline's included.
    history: per generation, its population's keys, offspring, best. front: keys of the
    non-dominated genomes of all evaluated. evaluator_calls: genomes this call handed to the
    evaluator (not read back from the store)."""
    population: list[Genome]
    records: dict[str, dict]
    history: list[dict]
    front: list[str]
    baseline: str | None
    evaluator_calls: int
    report: dict[str, str] | None


def generation_rng(seed: int, generation: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(generation)])


def objectives(records: list[dict]) -> np.ndarray:
    """objectives_NxM to minimise: (-score, state, params) per record."""
    return np.array([[-score_of(r), r["costs"]["state"], r["costs"]["params"]] for r in records],
                    float)


def score_of(record: dict) -> float:
    score = (record.get("evaluation") or {}).get("score")
    return 0.0 if score is None or math.isnan(score) else float(score)


def build_space(config: presets.SearchConfig) -> SearchSpace:
    return SearchSpace(config.mixers, config.channels, min_blocks=config.min_blocks,
                       max_blocks=config.max_blocks, choices=parse_choices(config.choices))


def build_budget(config: presets.SearchConfig) -> Budget:
    return Budget(max_params=config.max_params, max_state=config.max_state,
                  max_flops=config.max_flops, seq_len=config.seq_len,
                  vocab_size=config.vocab_size, dim=config.dim, norm=config.norm)


def run(workdir: str, *, preset: str | None = "cpu", config: presets.SearchConfig | None = None,
        evaluate: Evaluator | None = None, report: bool = True,
        log: Callable[[str], None] = print, **fields: Any) -> SearchResult:
    """Runs (or resumes) an architecture search in `workdir` and writes its report there.

    preset: "cpu" or "full" (mad_jax.search.presets), or None for SearchConfig's defaults;
      `fields` override it (e.g. population=4, tasks="in-context-recall,memorization",
      max_params=400_000). config: a SearchConfig to start from instead of a preset.
    evaluate: evaluate(genome, out_dir) -> {"score": float, ...} (default: the MAD proxy
      through protocol.run, `ProtocolEvaluator`); with `parallel` > 1 it is called from worker
      threads, one per device, under `jax.default_device`.
    Everything is checked before anything trains: the space, the budgets (by drawing genomes),
    the baseline, the tasks, and the workdir's earlier search (SearchError, one line).
    """
    if config is None:
        config = presets.resolve(preset, **fields)
    elif fields:
        config = presets.resolve(None, **{**dataclasses.asdict(config), **fields})
    space, budget = build_space(config), build_budget(config)
    workers = parallel.worker_count(config.parallel, config.population)
    if workers > 1 and (config.train or {}).get("mesh"):
        raise SearchError(f"parallel={config.parallel} trains each genome on one device; leave "
                          "train.mesh empty, or set parallel=1 to train each genome on a mesh")
    log = _serialized(log)  # workers log their protocol's lines too
    evaluator = evaluate or ProtocolEvaluator(
        tasks=config.tasks, preset=config.protocol_preset, grid=config.grid,
        train=config.train, dim=config.dim, norm=config.norm, seed=config.seed,
        cache_dir=storage.join(workdir, "data"), progress_every_s=config.progress_every_s,
        log=lambda line: log(f"  {parallel.worker_prefix()}{line}"))
    evaluation_identity = getattr(evaluator, "identity", None) or {
        "evaluator": getattr(evaluator, "__qualname__", type(evaluator).__name__)}
    identity = {"format": FORMAT, "space": space.describe(), "budget": budget.describe(),
                "evaluation": evaluation_identity, "population": config.population,
                "crossover_prob": config.crossover_prob, "seed": config.seed}
    store = SearchStore(workdir)
    state = store.read_state()
    store.check_identity(state, identity)
    check_rng = np.random.default_rng([int(config.seed), 2**31 - 1])  # not a generation's stream
    constraints.check_feasible(lambda: space.sample(check_rng), budget, tries=FEASIBILITY_TRIES)
    baseline = _baseline(config.baseline, budget)
    loop = _Loop(config, space, budget, evaluator, identity_key(evaluation_identity), store,
                 identity, state, log, workers)
    population = loop.run(baseline)
    result = loop.result(population, baseline)
    if report:
        result.report = report_lib.write_report(workdir, result, config=config, log=log)
    return result


def _serialized(log: Callable[[str], None]) -> Callable[[str], None]:
    lock = threading.Lock()

    def serialized(line: str) -> None:
        with lock:
            log(line)
    return serialized


def _baseline(text: str, budget: Budget) -> Genome | None:
    if not text:
        return None
    try:
        genome = Genome.parse(text)
    except ValueError as e:
        raise SearchError(f"baseline {text!r}: {' '.join(str(e).split())}") from None
    costs, why = budget.check(genome)
    if costs is None:
        raise SearchError(f"baseline {text!r} {why}; give another baseline (or '' for none)")
    return genome


class _Loop:
    """One search's evolution over generations, with its evaluations read back or run (on
    `workers` devices at once when more than 1)."""

    def __init__(self, config, space, budget, evaluator, evaluation_key, store, identity, state,
                 log, workers: int = 1):
        self.config, self.space, self.budget, self.evaluator = config, space, budget, evaluator
        self.evaluation_key, self.store, self.log = evaluation_key, store, log
        self.state = state or {"format": FORMAT, "identity": identity, "history": [],
                               "evaluated": [], "genomes": {}, "baseline": None}
        self.records: dict[str, dict] = {}
        self.total = ((1 if config.baseline else 0)
                      + config.population * (config.generations + 1))
        self.done = self.calls = 0
        self.evaluated_s = 0.0
        self.generation = 0
        self.workers, self.pool = workers, None

    def run(self, baseline: Genome | None) -> list[Genome]:
        if self.workers > 1:
            self.pool = parallel.DevicePool(self.workers)
        finished = False
        try:
            population = self.evolve(baseline)
            finished = True
        finally:
            if self.pool is not None:  # after an error, the running evaluations finish alone
                self.pool.close(wait=finished)
        return population

    def evolve(self, baseline: Genome | None) -> list[Genome]:
        history = self.state["history"]
        if not history:
            self.log(f"search: a space of about {self.space.size():.3g} genomes; population "
                     f"{self.config.population}, {self.config.generations} generations, up to "
                     f"{self.total} evaluations -> {self.store.workdir}")
        elif len(history) > self.config.generations:
            self.log(f"search: all {len(history) - 1} generations done, nothing to train "
                     f"({self.store.workdir})")
        else:
            self.log(f"search: resuming after generation {len(history) - 1} of "
                     f"{self.config.generations} ({self.store.workdir})")
        first = None if history else self.first_population()  # may raise: before training
        self.evaluate_all(([(baseline, "baseline")] if baseline is not None else [])
                          + [(genome, "") for genome in first or []])
        if baseline is not None:
            self.state["baseline"] = baseline.key
        if history:
            population = [self.load(k) for k in history[-1]["population"]]
            for entry in history:  # what earlier generations evaluated counts as done
                self.done += len(entry["offspring"])
        else:
            self.finish_generation(0, first, first)
            population = first
        while len(history) <= self.config.generations:
            population = self.next_generation(population, len(history))
        return population

    def first_population(self) -> list[Genome]:
        """`population` distinct genomes within budget, drawn from generation 0's stream."""
        rng = generation_rng(self.config.seed, 0)
        population, keys = [], set()
        for _ in range(100 * self.config.population):
            if len(population) == self.config.population:
                break
            genome = self.space.sample(rng)
            if genome.key not in keys and not self.budget.check(genome)[1]:
                population.append(genome)
                keys.add(genome.key)
        if len(population) < 2:
            raise SearchError(f"the search space holds fewer than 2 genomes within budget "
                              f"(found {len(population)}); widen the space or the budgets")
        return population

    def next_generation(self, population: list[Genome], generation: int) -> list[Genome]:
        self.generation = generation
        rng = generation_rng(self.config.seed, generation)
        seen = set(self.state["evaluated"])
        parents = [self.records[g.key] for g in population]
        children = variation.offspring(
            population, objectives(parents), self.space, rng, self.config.population,
            accept=lambda g: g.key not in seen and not self.budget.check(g)[1],
            crossover_prob=self.config.crossover_prob)
        self.evaluate_all([(child, "") for child in children])
        combined = population + children
        keep = nsga.select(objectives([self.records[g.key] for g in combined]),
                           self.config.population)
        survivors = [combined[i] for i in keep]
        self.finish_generation(generation, survivors, children)
        return survivors

    def finish_generation(self, generation: int, population: list[Genome], new: list[Genome]):
        for genome in new:
            if genome.key not in self.state["genomes"]:
                self.state["evaluated"].append(genome.key)
                self.state["genomes"][genome.key] = genome.to_json()
        best = max(population, key=lambda g: score_of(self.records[g.key]))
        front = nsga.non_dominated_sort(objectives([self.records[g.key] for g in population]))[0]
        self.state["history"].append({
            "generation": generation, "population": [g.key for g in population],
            "offspring": [g.key for g in new], "best": best.key,
            "best_score": score_of(self.records[best.key]),
            "mean_score": float(np.mean([score_of(self.records[g.key]) for g in population])),
            "front": [population[i].key for i in front],
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.store.write_state(self.state)
        self.log(f"generation {generation}/{self.config.generations} done: best "
                 f"{score_of(self.records[best.key]):.3f} {best.label}; front of "
                 f"{len(front)}; {self.done}/{self.total} evaluations")

    def load(self, key: str) -> Genome:
        """A genome of an earlier generation, with its record read back; a record lost since
        (a search killed between a protocol's end and the record's write) is evaluated again,
        which the protocol's own resume answers without training."""
        genome = Genome.from_json(self.state["genomes"][key])
        record = self.store.read_record(key)
        if record is not None and record.get("evaluation_key") == self.evaluation_key:
            self.records[key] = record
        else:
            self.evaluate(genome, tag="record lost", count=False)
        return genome

    def evaluate_all(self, items: list[tuple[Genome, str]]) -> None:
        """Every (genome, tag)'s record, as `evaluate` one after another. With a pool, the
        genomes not stored yet train at once first; their records are written here, in order.
        An evaluation that raises stops the search (its exception is raised) once the ones
        already running have been stored; the queued ones are dropped."""
        running = {}
        if self.pool is not None:
            for genome, _ in items:
                key = genome.key
                if key not in self.records and key not in running and self.stored(key) is None:
                    running[key] = self.pool.submit(key, self.train, genome)
        error = None
        for genome, tag in items:
            future = running.get(genome.key)
            if error is not None and (future is None or future.cancelled()):
                continue  # a sequential search would not have got here
            try:
                self.evaluate(genome, tag, running=future)
            except BaseException as e:
                for queued in running.values():
                    queued.cancel()
                raised_by_worker = (future is not None and future.done()
                                    and not future.cancelled() and future.exception() is e)
                if not raised_by_worker:  # the search's own error, or an interrupt: at once
                    raise
                error = error or e
        if error is not None:
            raise error

    def stored(self, key: str) -> dict | None:
        """The genome's stored record when it was scored the way this search scores."""
        record = self.store.read_record(key)
        if record is not None and record.get("evaluation_key") == self.evaluation_key:
            return record
        return None

    def train(self, genome: Genome) -> tuple[dict, float, str | None]:
        """(evaluation, seconds, device name or None) of one evaluator call (in a worker
        thread when the search has a pool: it writes nothing of the search's)."""
        t0 = time.time()
        evaluation = dict(self.evaluator(genome, self.store.genome_dir(genome)))
        return evaluation, time.time() - t0, parallel.worker_device()

    def evaluate(self, genome: Genome, tag: str = "", count: bool = True,
                 running=None) -> dict:
        """The genome's record: read back when stored, else trained and stored. running: the
        future of its `train` call in the pool (it was not stored when submitted)."""
        key = genome.key
        if key in self.records:
            return self.records[key]
        record = None if running is not None else self.stored(key)
        if record is not None:
            self.done += count
            self.progress(record, "stored, skipped", tag)
        else:
            costs, _ = self.budget.check(genome)
            evaluation, spent, device = (running.result() if running is not None
                                         else self.train(genome))
            record = self.store.write_record(genome, costs=costs.to_json(),
                                             evaluation=evaluation,
                                             evaluation_key=self.evaluation_key)
            self.done += count
            self.calls += 1
            self.evaluated_s += spent
            where = f" on {device}" if device else ""
            self.progress(record, f"evaluated in {_duration(spent)}{where}", tag)
        self.records[key] = record
        return record

    def progress(self, record: dict, how: str, tag: str) -> None:
        costs = record["costs"]
        scored = [r for k, r in self.records.items() if k != self.state.get("baseline")]
        best = max(scored, key=score_of, default=None)
        best_text = (f"; best so far {score_of(best):.3f} {best['label']}"
                     if best is not None else "")
        eta = (self.evaluated_s / self.calls * max(self.total - self.done, 0) / self.workers
               if self.calls else None)
        where = tag or f"gen {self.generation}/{self.config.generations}"
        self.log(f"[{where}, evaluation "
                 f"{self.done}/{self.total}] {record['label']}: score {score_of(record):.3f}, "
                 f"params {costs['params']:,}, state {costs['state']:,} ({how}){best_text}; "
                 f"ETA {_duration(eta)}")

    def result(self, population: list[Genome], baseline: Genome | None) -> SearchResult:
        for key in self.state["evaluated"]:
            if key not in self.records:
                self.load(key)
        searched = [self.records[k] for k in self.state["evaluated"]]
        front = nsga.non_dominated_sort(objectives(searched))[0] if searched else []
        return SearchResult(population=population, records=dict(self.records),
                            history=list(self.state["history"]),
                            front=[searched[i]["key"] for i in front],
                            baseline=baseline.key if baseline is not None else None,
                            evaluator_calls=self.calls, report=None)


def _duration(seconds: float | None) -> str:
    """"0:04:12"; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

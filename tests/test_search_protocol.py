"""The architecture search end to end through protocol.run, at a tiny budget: it trains each
genome once, a second run trains nothing, and a genome whose protocol finished but whose record
was lost is read back by the protocol's own resume ("done, skipped")."""
import os

from mad_jax import search

TINY = {"train_steps": 4, "batch_size": 8, "max_train_examples": 64, "max_test_examples": 32,
        "eval_every_steps": 2, "checkpoint_every_steps": 4, "log_every_steps": 2}
# Four genomes (attention of 1 or 2 heads, SwiGLU or MLP): attention compiles fastest.
FIELDS = dict(mixers="mh-attention", channels="swiglu,mlp", min_blocks=1, max_blocks=1,
              choices="mh-attention.num_heads=1/2,swiglu.hidden_dim=32,mlp.hidden_dim=32",
              dim=16, population=2, generations=1, tasks="memorization",
              protocol_preset="smoke", grid="1e-3:0", train=TINY, baseline="")


def test_search_through_the_protocol_trains_each_genome_once(tmp_path):
    messages = []
    first = search.run(str(tmp_path), preset=None, log=messages.append, **FIELDS)
    trained = [m for m in messages if "best final test acc" in m]
    assert first.evaluator_calls == len(first.records) == len(trained) >= 3
    for record in first.records.values():
        assert 0.0 <= record["evaluation"]["score"] <= 1.0
        assert record["evaluation"]["tasks"].keys() == {"memorization"}
        assert os.path.exists(tmp_path / "genomes" / record["key"] / "results.csv")
    assert (tmp_path / "report.md").exists()

    messages.clear()
    second = search.run(str(tmp_path), preset=None, log=messages.append, report=False, **FIELDS)
    assert second.evaluator_calls == 0 and second.history == first.history
    assert not any("MAD protocol" in m for m in messages)

    # a search killed after a genome's protocol finished, before its record was written
    lost = first.history[-1]["offspring"][0]
    os.remove(tmp_path / "genomes" / lost / "genome.json")
    messages.clear()
    third = search.run(str(tmp_path), preset=None, log=messages.append, report=False, **FIELDS)
    assert third.evaluator_calls == 1 and third.history == first.history
    assert any("done, skipped" in m for m in messages)
    assert not any("best final test acc" in m for m in messages)
    scored = {k: v for k, v in third.records[lost]["evaluation"].items() if k != "wall_time_s"}
    assert scored == {k: v for k, v in first.records[lost]["evaluation"].items()
                      if k != "wall_time_s"}

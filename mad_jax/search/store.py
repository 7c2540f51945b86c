"""What a search keeps in its workdir (a local folder or a bucket URL, through mad_jax.storage).

    <workdir>/search.json                  identity and state: every generation's population,
                                           the genomes evaluated so far (written atomically
                                           after every generation)
    <workdir>/genomes/<key>/genome.json    the genome, its costs and its evaluation
    <workdir>/genomes/<key>/...            that genome's protocol workdir (results.csv, runs/)
    <workdir>/data/                        the task-data cache all genomes share

A genome's evaluation is written right after it finishes, so a genome met twice, in this search
or in a killed one, is read back instead of trained; the evaluation's identity is stored with it
and must match for it to count.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from mad_jax import storage
from mad_jax.search.errors import SearchError
from mad_jax.search.genome import Genome

STATE_FILE = "search.json"
GENOME_FILE = "genome.json"
FORMAT = 1


def identity_key(identity: Any) -> str:
    """16 hex digits of the sha256 of a JSON identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class SearchStore:
    def __init__(self, workdir: str):
        self.workdir = str(workdir)

    def genome_dir(self, genome: Genome) -> str:
        return storage.join(self.workdir, "genomes", genome.key)

    def read_record(self, key: str) -> dict | None:
        """genome.json of a genome key (None if there is none or it is damaged)."""
        path = storage.join(self.workdir, "genomes", key, GENOME_FILE)
        try:
            return storage.read_json(path) if storage.exists(path) else None
        except (OSError, ValueError):
            return None

    def write_record(self, genome: Genome, *, costs: dict, evaluation: dict,
                     evaluation_key: str) -> dict:
        record = {"format": FORMAT, "key": genome.key, "label": genome.label,
                  "genome": genome.to_json(), "costs": costs, "evaluation": evaluation,
                  "evaluation_key": evaluation_key}
        storage.write_json(storage.join(self.genome_dir(genome), GENOME_FILE), record)
        return record

    def read_state(self) -> dict | None:
        path = storage.join(self.workdir, STATE_FILE)
        if not storage.exists(path):
            return None
        try:
            return storage.read_json(path)
        except (OSError, ValueError) as e:
            raise SearchError(f"{path} is damaged ({type(e).__name__}); move it aside to start "
                              "the search again (stored genome scores are reused)") from None

    def write_state(self, state: dict) -> None:
        storage.write_json(storage.join(self.workdir, STATE_FILE), state)

    def check_identity(self, state: dict | None, identity: dict) -> None:
        """Raises SearchError naming the fields that differ when the workdir holds a search
        with another identity (space, budget, evaluation, population, seed)."""
        if state is None or state.get("identity") == identity:
            return
        old = state.get("identity") or {}
        changed = [f"{k}: {_short(old.get(k))} -> {_short(identity.get(k))}"
                   for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
        raise SearchError(f"{self.workdir} holds another search ({'; '.join(changed[:3])}); use "
                          "another workdir, or the same settings to resume it")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."

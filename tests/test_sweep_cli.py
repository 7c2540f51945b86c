"""The sweep CLI: config typos and bad names give one-line errors and a non-zero exit; a tiny sweep
runs end to end and prints the score table first when it finishes; `:report=false` turns the
report off; `print_config` prints the resolved config; scaling configs run through the same
command."""
import os
import runpy
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from experiments import sweep
from experiments.configs import compare, mad
from mad_jax.protocol import ProtocolError

BAD_INPUT = (sweep.SweepError, ProtocolError)  # one line, exit status 1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr):
    # absl/jax may log warnings (lines starting with W/I + digits); the error is ours.
    return [l for l in stderr.splitlines() if l.startswith("error:")]


def test_config_typo_exits_nonzero_with_one_line():
    p = cli("--config=experiments/configs/mad.py", "--config.presett=smoke")
    assert p.returncode != 0
    lines = _error_lines(p.stderr)
    assert len(lines) == 1 and "presett" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_missing_config_and_bad_config_argument():
    p = cli("--config=experiments/configs/nope.py")
    assert p.returncode != 0 and len(_error_lines(p.stderr)) == 1, p.stderr
    p = cli("--config=experiments/configs/mad.py:colour=red")
    assert p.returncode != 0 and len(_error_lines(p.stderr)) == 1, p.stderr


def load_config(*args):
    """The config as the CLI loads it (config_flags, locked), from in-process flags."""
    argv = ["sweep", *args]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, flag_values=values,
                                             lock_config=True, sys_argv=argv)
    values(argv)
    return holder.value


def test_tiny_sweep_prints_score_table_first_and_report_false_writes_no_report(tmp_path):
    workdir = tmp_path / "w"
    fields = ("--config.layers=swiglu", "--config.dim=16", "--config.tasks=memorization",
              f"--config.workdir={workdir}", "--config.grid=1e-3:0,1e-3:0.1",
              "--config.train.train_steps=2", "--config.train.batch_size=8",
              "--config.train.max_test_examples=16")
    p = cli("--config=experiments/configs/mad.py:smoke,report=false", *fields)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.splitlines()
    notice = [i for i, l in enumerate(out) if "NOT MAD scores" in l]
    assert notice, p.stdout
    assert out[notice[0] + 1].startswith("| arch | memorization | mean |"), p.stdout
    assert out[notice[0] + 3].startswith("| swiglu |")
    assert "step 2/2" in p.stdout  # progress lines
    for name in ("results.csv", "swiglu/results.csv", "swiglu/protocol.json"):
        assert (workdir / name).exists(), name
    assert not [n for n in ("report.md", "report.html", "plots") if (workdir / n).exists()]
    # The same sweep with the report on (the default): every run is done, the report is new.
    config = load_config("--config=experiments/configs/mad.py", "--config.preset=smoke", *fields)
    assert config.report is True
    assert sweep.run_mad(config, compilation_cache=False) == 0
    for name in ("report.md", "report.html", "plots/mad_scores.png"):
        assert (workdir / name).exists(), name


def test_smoke_sweep_to_a_bucket_url(tmp_path, capsys):
    """A workdir URL (tensorstore's in-memory kvstore standing in for gs://): results, report
    and metrics go to the bucket, equal to a local sweep's; a second run trains nothing."""
    import pandas as pd

    from mad_jax import storage
    from mad_jax.protocol import results_table

    fields = ("--config.layers=swiglu", "--config.dim=16", "--config.tasks=memorization",
              "--config.grid=1e-3:0", "--config.train.train_steps=2",
              "--config.train.batch_size=8", "--config.train.max_test_examples=16",
              "--config.train.checkpoint_every_steps=1")
    url = f"memory://bucket/{tmp_path.name}"
    tables = {}
    for workdir in (url, str(tmp_path / "local")):
        config = load_config("--config=experiments/configs/mad.py", "--config.preset=smoke",
                             f"--config.workdir={workdir}", *fields)
        assert sweep.run_mad(config, compilation_cache=False) == 0
        assert "step 2/2" in capsys.readouterr().out
        tables[workdir] = results_table.read(storage.join(workdir, "results.csv"))
    for name in ("report.md", "report.html", "plots/mad_scores.png", "swiglu/protocol.json",
                 "swiglu/runs/memorization/" + tables[url]["setting"][0] + "/result.json"):
        assert storage.exists(storage.join(url, name)), name
    assert not (tmp_path / "memory:").exists()  # nothing landed in a local folder of that name
    timing = [c for c in tables[url].columns if c.endswith("_s")]
    pd.testing.assert_frame_equal(tables[url].drop(columns=timing),
                                  tables[str(tmp_path / "local")].drop(columns=timing))
    capsys.readouterr()
    config = load_config("--config=experiments/configs/mad.py", "--config.preset=smoke",
                         f"--config.workdir={url}", *fields)
    assert sweep.run_mad(config, compilation_cache=False) == 0
    out = capsys.readouterr().out
    assert "done, skipped" in out and "step 2/2" not in out  # every run was done: none trained


def test_print_config_shows_the_resolved_config_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "w"
    config = load_config("--config=experiments/configs/mad.py:quick", "--config.layers=swiglu",
                         "--config.dim=16", "--config.tasks=memorization",
                         f"--config.workdir={workdir}", "--config.train.batch_size=16",
                         "--config.print_config=true")
    assert sweep.run_mad(config) == 0
    out = capsys.readouterr().out
    for line in ("preset: quick", "grid: 0.001:0", "tasks: memorization", "  batch_size: 16",
                 "  train_steps: 6000", "  train_epochs: null", "  precision: float32",
                 "  schedule: per-step", "  min_learning_rate: 1.0e-06"):
        assert line in out.splitlines(), (line, out)
    assert not workdir.exists()


def test_scaling_configs_run_through_the_same_command(tmp_path):
    p = cli("--config=experiments/configs/scaling.py:smoke,print_config=true",
            f"--config.workdir={tmp_path / 's'}", "--config.train.grad_clip=0.5")
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout.splitlines()
    for line in ("kind: scaling", "preset: smoke", "seq_len: 32", "  learning_rate: 0.005",
                 "  grad_clip: 0.5", "  warmup_fraction: 0.05"):  # preset, flag, PretrainConfig
        assert line in out, (line, p.stdout)
    assert not (tmp_path / "s").exists()


def test_old_scaling_entry_point_names_the_new_one(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["scaling_sweep", "--config=experiments/configs/scaling.py"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("experiments.scaling_sweep", run_name="__main__")
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: python -m experiments.scaling_sweep is now python -m experiments.sweep "
                   "(the same flags): python -m experiments.sweep "
                   "--config=experiments/configs/scaling.py"]


# --- in-process checks of the same validation (no subprocess start-up) ---

def _config(**fields):
    c = mad.get_config()
    for k, v in fields.items():
        c[k] = v
    return c


@pytest.mark.parametrize("fields, message", [
    ({"layers": "hyena swiglu foo"}, "unknown layer 'foo'"),
    ({"tasks": "in-context-recall,recal"}, "unknown task(s) 'recal'"),
    ({"preset": "fast"}, "unknown preset 'fast'"),
    ({"grid": "1e-3"}, "grid must look like"),
])
def test_validation_errors(tmp_path, fields, message):
    with pytest.raises(BAD_INPUT, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.prepare(_config(workdir=str(tmp_path), **fields))
    assert not os.listdir(tmp_path)


def test_unwritable_workdir(tmp_path):
    from mad_jax.protocol.run import execute

    blocker = tmp_path / "file"
    blocker.write_text("")
    checked = sweep.prepare(_config(workdir=str(blocker / "w"), tasks="memorization",
                                    layers="swiglu", dim=16))
    with pytest.raises(ProtocolError, match="not writable"):
        execute(checked[0], log=lambda s: None)


def test_configs():
    c = mad.get_config("quick")
    assert c.preset == "quick" and c.layers == mad.DEFAULT_LAYERS
    assert mad.get_config("preset=smoke,tasks=compression").tasks == "compression"
    with pytest.raises(ValueError, match="unknown config field 'colour'"):
        mad.get_config("colour=red")
    archs = sweep.architectures(compare.get_config())
    assert set(archs) == {"hyena", "mh-hyena", "striped-hyena-attention", "mamba", "attention"}
    assert sweep.architectures(mad.get_config()) == {
        "hyena+swiglu+mh-attention+swiglu": mad.DEFAULT_LAYERS}
    from mad_jax.protocol.validation import parse_grid
    assert parse_grid("1e-4:0,1e-3:0.1") == ((1e-4, 0.0), (1e-3, 0.1))


def test_paper_config_variants_and_arch_selection(tmp_path):
    from experiments.configs import paper

    full = paper.get_config()
    assert full.preset == "full" and len(sweep.architectures(full)) == 8
    assert full.norm == "rmsnorm"  # the reference's benchmark.py models
    cpu = paper.get_config("cpu")
    assert cpu.preset == "quick" and cpu.tasks == paper.CPU_TASKS
    assert list(sweep.architectures(cpu)) == ["transformer", "hyena"]
    assert paper.get_config("cpu,seeds=2").seeds == 2
    with pytest.raises(ValueError, match="unknown paper.py variant 'gpu'"):
        paper.get_config("gpu")
    cpu.archs = "transformer,rnn"
    with pytest.raises(sweep.SweepError, match="unknown architecture.*'rnn'"):
        sweep.architectures(cpu)
    # Every architecture of the paper builds from registered layers and checks out against a
    # task's data (one task keeps this cheap: validation builds each on its bounding settings).
    checked = sweep.prepare(paper.get_config(f"workdir={tmp_path},tasks=in-context-recall"))
    assert {c.arch for c in checked} == set(paper.ARCHITECTURES)
    with pytest.raises(ProtocolError, match="seeds must be a positive integer"):
        sweep.prepare(paper.get_config(f"workdir={tmp_path},seeds=0"))


# --- signals: stop at a step boundary with a checkpoint, one line, 130 / 143 ---

def _start_sweep(workdir, steps):
    import subprocess as sp

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    return sp.Popen([sys.executable, "-m", "experiments.sweep", "--config=experiments/configs/mad.py",
                     "--config.layers=swiglu", "--config.dim=16", "--config.preset=smoke",
                     "--config.tasks=memorization", f"--config.workdir={workdir}",
                     "--config.grid=1e-3:0", f"--config.train.train_steps={steps}",
                     "--config.train.batch_size=8", "--config.train.max_test_examples=16",
                     "--config.train.eval_every_steps=1000000",
                     "--config.train.checkpoint_every_steps=1000000",
                     "--config.train.log_every_steps=1", "--config.report=false",
                     "--config.progress_every_s=0.5"],
                    cwd=ROOT, env=env, stdout=sp.PIPE, stderr=sp.PIPE, text=True)


def _wait_for(proc, pattern, timeout=300):
    import time as time_lib

    deadline = time_lib.time() + timeout
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if pattern in line or time_lib.time() > deadline:
            return seen
    return seen


def test_sigterm_checkpoints_and_exits_with_one_line(tmp_path):
    import signal
    import time as time_lib

    sig, status = "SIGTERM", 143  # what a preemptible TPU VM sends
    workdir = tmp_path / "w"
    proc = _start_sweep(workdir, steps=100000)
    seen = _wait_for(proc, "/100000 ")  # a progress line: training steps are running
    assert any("/100000 " in l for l in seen), "".join(seen[-20:])
    sent = time_lib.time()
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    assert time_lib.time() - sent < 30
    assert proc.returncode == status, stderr[-2000:]
    errors = _error_lines(stderr)
    assert len(errors) == 1 and f"interrupted by {sig} at step" in errors[0], stderr[-2000:]
    assert "checkpoint written" in errors[0] and "Traceback" not in stderr
    assert (workdir / "swiglu" / "runs" / "memorization" / "baseline" / "checkpoints").is_dir()


def test_ctrl_c_while_compiling_exits_cleanly(tmp_path):
    import signal

    proc = _start_sweep(tmp_path / "w", steps=100000)
    seen = _wait_for(proc, "MAD protocol, preset")  # next: data, then the first compile
    assert any("MAD protocol" in l for l in seen), "".join(seen)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr[-2000:]  # not 139 (a crash inside XLA)
    assert "Traceback" not in stderr and len(_error_lines(stderr)) <= 1
    assert "stopping at the next step boundary" in stderr


def test_architecture_checked_before_the_workdir_is_touched(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(ProtocolError, match=r"layer 'mh-attention' \(block 2\) does not build "
                                            r"at dim=100: width 100 is not divisible"):
        sweep.prepare(_config(workdir=str(workdir), dim=100, tasks="memorization"))
    assert not workdir.exists()

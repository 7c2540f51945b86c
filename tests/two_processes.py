"""Runs a test file as a two-process JAX job on this machine (2 processes x 4 CPU devices).

The file is its own worker: `python <file> <process_id> <port> <out_dir>`.
"""
import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(worker_file: str, out_dir, timeout_s: int = 300) -> list[str]:
    """Starts both workers, waits for them, asserts both exited 0; returns their outputs."""
    port = free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                   [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, worker_file, str(i), str(port), str(out_dir)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    finally:  # a failed worker leaves the other waiting for it: stop both
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs

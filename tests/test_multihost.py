"""Multi-host start-up: `mixjax train` launched as two CPU processes of 4 devices each (joined by
jax.distributed over localhost, gloo collectives) trains the same model as one process with 8
devices: the same per-step losses and validation losses."""

import json
import os
import socket
import subprocess
import sys

import pytest

from mixjax.cli import main
from tests.data_fixtures import letter_domain

# data 2 x fsdp 4: across two processes of 4 devices, fsdp within each and data across (a hybrid mesh)
TRAIN = ["--weights", "a=0.5,b=0.5", "--budget-tokens", str(4 * 16 * 32), "--batch-size", "16", "--seq-len", "32",
         "--model", "tiny", "--quiet", "--eval-every", "2", "--mesh", "2,4,1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _train(data, out, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "MIXJAX_", "XLA_", "SLURM_"))}
    env.update(env_extra, MIXJAX_JAX_CACHE="")
    return subprocess.Popen([sys.executable, "-m", "mixjax.cli", "train", "--data", str(data), "--out", str(out), *TRAIN],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _step_losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_as_many_devices(tmp_path):
    letter_domain(tmp_path / "a.jsonl", "a", 120)
    letter_domain(tmp_path / "b.jsonl", "b", 120, length=lambda i: 12 + i % 20)
    data = tmp_path / "data"
    assert main(["prepare", "--out", str(data), "--quiet", "--domain", f"a={tmp_path / 'a.jsonl'}",
                 "--domain", f"b={tmp_path / 'b.jsonl'}"]) == 0

    single = _train(data, tmp_path / "single", {"JAX_NUM_CPU_DEVICES": "8"})
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out

    address = f"localhost:{_free_port()}"
    procs = [_train(data, tmp_path / "multi", {"JAX_NUM_CPU_DEVICES": "4", "JAX_COORDINATOR_ADDRESS": address,
                                               "MIXJAX_NUM_PROCESSES": "2", "MIXJAX_PROCESS_ID": str(i)})
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    one = json.loads((tmp_path / "single" / "result.json").read_text())
    two = json.loads((tmp_path / "multi" / "result.json").read_text())
    assert one["devices"]["count"] == 8 and two["devices"]["count"] == 8
    assert two["tokens"] == one["tokens"]
    assert len(_step_losses(tmp_path / "multi")) == one["steps"] == 4  # one writer, not one per process
    assert _step_losses(tmp_path / "multi") == pytest.approx(_step_losses(tmp_path / "single"), abs=1e-5)
    for d in ("a", "b"):
        assert two["val_loss"][d] == pytest.approx(one["val_loss"][d], abs=1e-5)


def test_hybrid_grid_keeps_fsdp_and_tensor_within_a_process():
    """Two processes of 4 devices: the data axis spans the processes, each fsdp x tensor block is one
    process's devices; a data axis the processes do not divide falls back to JAX's layout."""
    from types import SimpleNamespace

    from mixjax.train.mesh import hybrid_device_grid

    devices = [SimpleNamespace(id=i, process_index=i // 4, platform="cpu", device_kind="cpu", slice_index=None)
               for i in range(8)]
    grid = hybrid_device_grid((2, 2, 2), devices)
    assert grid.shape == (2, 2, 2)
    assert [{d.process_index for d in grid[i].flat} for i in range(2)] == [{0}, {1}]
    assert sorted(d.id for d in grid.flat) == list(range(8))
    assert [{d.process_index for d in g.flat} for g in hybrid_device_grid((4, 2, 1), devices)] == [{0}, {0}, {1}, {1}]
    assert hybrid_device_grid((1, 8, 1), devices) is None  # fsdp across processes: JAX's layout
    assert hybrid_device_grid((2, 4, 1), devices[:4]) is None  # one process

"""mixjax keeps freed host memory for reuse, so XLA's per-call temporary buffers are not page-faulted
in again on every call (mixjax/host_memory.py)."""

import json
import os
import subprocess
import sys

import pytest

from mixjax import host_memory

# The tiny preset's train step at 8 x 256, whose temporary buffers (~106 MB, one block) are
# above glibc's mmap threshold; the script prints the median minor page faults of a step after
# warm-up. (The median: with the heap kept, a step now and then still lands on new pages while the
# heap settles.)
FAULTS_PER_STEP = r"""
import json, resource, statistics
import numpy as np
import mixjax, mixjax.host_memory as hm
import jax
from mixjax.model import get_config
from mixjax.train.mesh import make_mesh
from mixjax.train.step import StepConfig, Stepper
b, l, v = 8, 256, 259
st = Stepper(StepConfig(get_config("tiny", v), b, l, 1), make_mesh(None, jax.devices()[:1]))
state = st.init_state(st.init_params(0))
rng = np.random.default_rng(0)
batch = st.put_batch({"tokens": rng.integers(0, v, (b, l)), "segment_ids": np.ones((b, l)),
                      "positions": np.broadcast_to(np.arange(l), (b, l)), "loss_mask": np.ones((b, l), bool),
                      "domain_ids": np.zeros((b, l))})
lr = np.float32(1e-3)
for _ in range(2):
    state, m = st.train_step(state, batch, lr, st.no_loss_weights())
jax.block_until_ready(m)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, m = st.train_step(state, batch, lr, st.no_loss_weights())
    jax.block_until_ready(m)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": hm.applied(), "faults_per_step": statistics.median(faults)}))
"""


def _faults(setting: str) -> dict:
    env = {**os.environ, host_memory.ENV: setting, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or host_memory._glibc() is None,
                    reason="the malloc settings are glibc's")
@pytest.mark.slow
def test_train_step_buffers_are_not_faulted_in_every_step():
    default, tuned = _faults("0"), _faults("1")
    assert default["applied"] is False and tuned["applied"] is True
    pages_of_20_mb = 20e6 / 4096
    assert default["faults_per_step"] > pages_of_20_mb, default  # glibc mmaps the block anew each step
    assert tuned["faults_per_step"] < 0.1 * pages_of_20_mb, tuned


@pytest.mark.parametrize("env, expected", [
    ({"MIXJAX_MALLOC_TUNING": "0"}, False),
    ({"MIXJAX_MALLOC_TUNING": "1", "JAX_PLATFORMS": "cuda"}, True),
    ({"JAX_PLATFORMS": "cuda"}, False),
    ({"JAX_PLATFORMS": "cpu"}, True),
])
def test_wanted_follows_the_switch_and_the_platform(monkeypatch, env, expected):
    for k in ("MIXJAX_MALLOC_TUNING", "JAX_PLATFORMS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert host_memory.wanted() is expected


def test_auto_skips_hosts_with_an_accelerator_plugin(monkeypatch):
    monkeypatch.delenv("MIXJAX_MALLOC_TUNING", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host_memory, "accelerator_plugin_installed", lambda: True)
    assert host_memory.wanted() is False
    monkeypatch.setattr(host_memory, "accelerator_plugin_installed", lambda: False)
    assert host_memory.wanted() is True

"""The train step on 1 device and on 8 fake CPU devices (several mesh shapes) gives the same
losses; parameter shardings come from where the parameters are declared."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixjax.model import ModelConfig
from mixjax.train.mesh import fit_spec, make_mesh
from mixjax.train.step import StepConfig, Stepper

CFG = ModelConfig(vocab_size=67, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=64)


def _batches(n, B=8, L=24, K=3, vocab=67):
    rng = np.random.default_rng(0)
    for _ in range(n):
        seg = np.ones((B, L), int)
        seg[:, L // 2:] = 2
        seg[:, -3:] = 0
        pos = np.concatenate([np.arange(L // 2), np.arange(L - L // 2)])[None].repeat(B, 0)
        dom = rng.integers(0, K, (B, 2)).repeat(L // 2, 1)
        dom[seg == 0] = -1
        yield {"tokens": rng.integers(0, vocab, (B, L)), "segment_ids": seg, "positions": pos,
               "loss_mask": rng.random((B, L)) < 0.7, "domain_ids": dom}


def _run(devices, shape, grad_accum=1, steps=3):
    st = Stepper(StepConfig(CFG, 8, 24, 3, grad_accum=grad_accum), make_mesh(shape, devices))
    state = st.init_state(st.init_params(0))
    out = []
    for b in _batches(steps):
        state, m = st.train_step(state, st.put_batch(b), np.float32(3e-3), st.no_loss_weights())
        m = jax.device_get(m)
        out.append(np.concatenate([[m["loss"]], m["domain_loss_sum"] / m["domain_count"]]))
    return np.array(out), st, state


def test_one_device_and_eight_devices_give_the_same_losses():
    assert len(jax.devices()) == 8
    ref, _, ref_state = _run(jax.devices()[:1], None)
    assert np.all(np.isfinite(ref)) and not np.allclose(ref[0], ref[-1])
    for shape in [(2, 2, 2), (1, 4, 2)]:
        got, st, state = _run(jax.devices(), shape)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
        for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4)
    # the declared shardings are really used: q is split over fsdp and tensor on the (1,4,2) mesh
    q = state["params"]["layers"]["attn"]["q_DxHxE"]  # stacked over layers, the layer axis unsharded
    assert q.sharding.spec == P(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (1, 32 // 4, 4 // 2, 8)


def test_gradient_accumulation_matches_one_big_batch():
    ref, _, _ = _run(jax.devices()[:1], None, grad_accum=1, steps=2)
    acc, _, _ = _run(jax.devices()[:1], None, grad_accum=2, steps=2)
    np.testing.assert_allclose(acc, ref, rtol=2e-5, atol=2e-5)


def test_fit_spec_drops_axes_that_do_not_divide():
    mesh = make_mesh((1, 2, 4), jax.devices())
    assert fit_spec((32, 2, 8), P("fsdp", "tensor", None), mesh) == P("fsdp", None, None)
    assert fit_spec((32, 8), P("fsdp", "tensor"), mesh) == P("fsdp", "tensor")
    assert fit_spec((3,), P(None), mesh) == P(None)


def test_make_mesh_reads_the_shape_as_plan_does():
    """One reading of a mesh shape (train.config.resolve_mesh): -1 is the rest of the devices."""
    from mixjax.errors import MixjaxError

    assert dict(make_mesh((2, -1, 1), jax.devices()).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(MixjaxError, match=r"^mesh_shape 3,1,1 needs 3 devices, the device count is 8$"):
        make_mesh((3, 1, 1), jax.devices())
    with pytest.raises(MixjaxError, match=r"^mesh_shape 3,-1,1 does not divide the device count 8$"):
        make_mesh((3, -1, 1), jax.devices())


QWEN_STEPS = r"""
import json, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
jax.config.update("jax_num_cpu_devices", 8)
import numpy as np
from mixjax.model import get_config
from mixjax.train.mesh import make_mesh
from mixjax.train.step import StepConfig, Stepper
from tests.test_sharding import _batches

n = int(sys.argv[1])
# shard_activations off: at 32 tokens per device XLA's own layout keeps a quarter of the
# temporaries (8 fake devices with it need about 22 GB of this 24 GB machine)
cfg = get_config("qwen2.5-0.5b", attention="blockwise", remat="full", shard_activations=False,
                 n_layers=int(sys.argv[2]), scan_layers=True)
st = Stepper(StepConfig(cfg, 8, 32, 3, loss_chunk=16),
             make_mesh((1, n, 1) if n > 1 else None, jax.devices()[:n]))
state = st.init_state(st.init_params(0))
losses = []
for b in _batches(2, B=8, L=32, vocab=cfg.vocab_size):
    state, m = st.train_step(state, st.put_batch(b), np.float32(1e-4), st.no_loss_weights())
    losses.append(float(m["loss"]))
print("LOSSES", json.dumps(losses))
"""


@pytest.mark.slow
def test_qwen_half_billion_preset_steps_on_one_and_eight_devices():
    """qwen2.5-0.5b's width, heads and 151,936-token vocabulary (scanned layers, full remat,
    blockwise attention, chunked loss) take SFT steps on one device and on eight (fsdp 8) with the
    same finite losses. 2 of its 24 layers (166M of 494M parameters, the 136M embedding whole):
    scanned layers are one compiled body whatever the depth, and the whole model's memory is
    `mixjax plan`'s to show (test_plan.py, benchmarks/bench_scale.py); all 24 took 160 s. Each
    run is its own process: host memory that a long test process (which keeps its peak heap, see
    mixjax/host_memory.py) cannot spare."""
    root = Path(__file__).resolve().parents[1]

    def run(n):
        out = subprocess.run([sys.executable, "-c", QWEN_STEPS, str(n), "2"], capture_output=True, text=True,
                             cwd=root)
        line = [x for x in out.stdout.splitlines() if x.startswith("LOSSES")]
        assert out.returncode == 0 and line, out.stderr[-3000:]
        return np.array(json.loads(line[0].split(" ", 1)[1]))

    one, eight = run(1), run(8)
    assert np.all(np.isfinite(one)) and 11 < one[0] < 13  # about log(151936) = 11.9 at random init
    np.testing.assert_allclose(eight, one, rtol=1e-5)

"""Run as a script with 8 forced CPU devices: the sharded train step equals one device's.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_step_check

Prints the largest relative differences (parameters, BN statistics, loss) between steps of
an 8-pair global batch on a mesh of 8 devices and on a mesh of 1 device, for each BN mode;
exits non-zero if any exceeds 1e-5. Used by tests/test_train.py in a subprocess.

One step from the same state, for IW MaxSquare with multi-level guidance, in both
batch-statistics BN modes. One step is the property: a second
step would start from parameters that already differ by float32 round-off, which a random
tiny network with per-image BN on small feature maps (and argmax-based pixel weights) can
amplify far beyond 1e-5; that measures the network's conditioning, not the sharding.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from msjax import sharding  # noqa: E402
from msjax.models import tiny_deeplabv2  # noqa: E402
from msjax.training import optim  # noqa: E402
from msjax.training.optim import ORIGINAL_OPTIM  # noqa: E402
from msjax.training.step import (  # noqa: E402
    ORIGINAL_LOSS,
    create_train_state,
    jit_train_step,
    make_train_step,
)

# Argmax-weighted and thresholded terms too; a low threshold so that pixels are kept.
LOSS = dict(ORIGINAL_LOSS, target="iw_maxsquare", multi_level=True, multi_threshold=0.5)
OPTIM = dict(
    ORIGINAL_OPTIM,
    lr=0.01,
    iter_max=10,
    rules=optim.faithful_rules(aspp_branches=2, aux_head_trained=True),
)


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def tree_rel(a, b, origin):
    """max |a - b| / max |b - origin| over a whole tree: differences relative to the update.

    Leaf by leaf would be meaningless for leaves that start at 0 (BN biases): after one step
    they hold ~1e-5 and float32 summation order alone changes them by ~1e-10.
    """
    diff = max(
        float(np.max(np.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    step = max(
        float(np.max(np.abs(y - o)))
        for y, o in zip(jax.tree.leaves(b), jax.tree.leaves(origin), strict=True)
    )
    return diff / step


def run(bn_mode, devices, batches, loss):
    mesh = sharding.make_mesh(devices)
    model = tiny_deeplabv2(num_classes=5, bn_mode=bn_mode)
    variables = model.init(jax.random.key(0), np.zeros((1, 33, 33, 3), np.float32), train=False)
    initial = jax.device_get(variables)  # the step donates (and deletes) the state's buffers
    tx, _ = optim.make_optimizer(OPTIM, variables["params"])
    state = jax.device_put(create_train_state(variables, tx), sharding.replicated(mesh))
    step = jit_train_step(make_train_step(model, tx, loss), mesh, adapting=True)
    metrics = None
    for source, target in batches:
        state, metrics = step(
            state, sharding.to_global(source, mesh), sharding.to_global(target, mesh)
        )
    return jax.device_get(state), jax.device_get(metrics), initial


def main():
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 5, (8, 64, 80)).astype(np.int32)
    labels[:, :3] = 255
    source = {"image": rng.randn(8, 64, 80, 3).astype(np.float32), "label": labels}
    target = {"image": rng.randn(8, 64, 80, 3).astype(np.float32)}
    batches = [(source, target)]  # one step; see the module docstring
    worst = 0.0
    # IW MaxSquare + multi-level guidance exercises every term plain MaxSquare has, plus the
    # argmax-weighted and thresholded ones.
    cases = [
        ("iw+multi", LOSS, "per_image"),
        ("iw+multi", LOSS, "batch"),
    ]
    for name, loss, bn_mode in cases:
        with jax.default_matmul_precision("highest"):
            s8, m8, v0 = run(bn_mode, jax.devices(), batches, loss)
            s1, m1, _ = run(bn_mode, jax.devices()[:1], batches, loss)
        errs = {
            "params": tree_rel(s8.params, s1.params, v0["params"]),
            "batch_stats": tree_rel(s8.batch_stats, s1.batch_stats, v0["batch_stats"]),
            "loss": rel(m8["loss"], m1["loss"]),
        }
        print(f"{name}, BN {bn_mode}: 8 devices vs 1, max relative difference {errs}")
        worst = max(worst, *errs.values())
    print(f"worst {worst:.3e} (params and BN statistics relative to their change)")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())

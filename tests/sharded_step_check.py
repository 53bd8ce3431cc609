"""Run as a script with 8 forced CPU devices: the sharded train step equals one device's.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.sharded_step_check

An 8-pair global batch, one step from the same state, on a mesh of 8 devices and on a mesh
of 1 device, for IW MaxSquare with multi-level guidance (every term plain MaxSquare has,
plus the argmax-weighted and thresholded ones), in both batch-statistics BN modes. Used by
tests/test_distributed.py in a subprocess; exits non-zero if a check fails.

The step contains discrete decisions: the IW weights take an argmax per pixel, the
multi-level guidance an argmax and a confidence threshold. Eight devices sum in another
order than one, so a pixel whose two best classes are tied to float32 round-off may be
decided differently, and the step then differs by far more than round-off (a discontinuous
function). What is deterministic, and checked:
1. the forward passes agree to round-off, and every decision that differs between the two
   meshes is one at the edge: its margin (best minus second-best probability, or distance
   of the confidence to the threshold) is within the measured forward difference;
2. with those decisions computed once (from the 1-device forward) and shared by every run,
   the 8-device float32 step is as close to the exact step (the same step in float64 on one
   device) as the 1-device float32 step is: sharding adds no error of its own. Relative to
   the update, the 1-device float32 error is itself orders of magnitude larger with
   per-image BN than with batch BN (the early layers' kernel gradients sum per-image
   contributions that nearly cancel, so float32 round-off shows: a property of the
   function, not of the sharding, and its size differs between CPUs; figures in
   docs/reliability.md), so a fixed tolerance would test the CPU; the ratio to the 1-device
   error tests the sharding. Loss and BN statistics must also agree to 1e-5.
   The sharing replaces `msjax.losses.iw_pixel_weights` and `msjax.losses.multi_level_labels`,
   the two functions that make the decisions, by constants: the rest of the step is real.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from msjax import (  # noqa: E402
    losses,
    optim,  # noqa: E402
    sharding,
)
from msjax.configlib import ORIGINAL_LOSS  # noqa: E402
from msjax.methods import METHODS  # noqa: E402
from msjax.models import tiny_deeplabv2  # noqa: E402
from msjax.optim import ORIGINAL_OPTIM  # noqa: E402
from msjax.training.step import (  # noqa: E402
    create_train_state,
    jit_train_step,
    make_train_step,
)

# Argmax-weighted and thresholded terms too; a threshold low enough for a random 5-class
# network to keep some pixels and drop others.
LOSS = dict(ORIGINAL_LOSS, multi_threshold=0.3)
OPTIM = dict(
    ORIGINAL_OPTIM,
    lr=0.01,
    iter_max=10,
    rules=optim.faithful_rules(aspp_branches=2, aux_head_trained=True),
)
TOLERANCE = 1e-5  # loss and BN statistics, relative
ERROR_RATIO = 4.0  # 8-device error may be at most this multiple of the 1-device error
ERROR_FLOOR = 1e-6  # ... or this, whichever is larger (errors near float32 epsilon)
CLASSES = 5


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def tree_rel(a, b, origin):
    """max |a - b| / max |b - origin| over a whole tree: differences relative to the update.

    Leaf by leaf would be meaningless for leaves that start at 0 (BN biases): after one step
    they hold tiny values, and float32 summation order alone changes them by a large part.
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


def model_and_variables(bn_mode):
    model = tiny_deeplabv2(num_classes=CLASSES, bn_mode=bn_mode)
    variables = model.init(jax.random.key(0), np.zeros((1, 33, 33, 3), np.float32), train=False)
    return model, jax.device_get(variables)


def target_probabilities(model, variables, images, devices):
    """Softmaxes of both heads on the target batch in training mode, on a mesh of `devices`."""
    mesh = sharding.make_mesh(devices)

    def forward(variables, images):
        (main, aux), _ = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return jax.nn.softmax(main, axis=-1), jax.nn.softmax(aux, axis=-1)

    fn = jax.jit(
        forward,
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
        out_shardings=sharding.replicated(mesh),
    )
    with jax.default_matmul_precision("highest"):
        return jax.device_get(fn(variables, sharding.to_global(images["image"], mesh)))


def top2_margin(p):
    """Best minus second-best probability per pixel."""
    top = np.sort(p, axis=-1)
    return top[..., -1] - top[..., -2]


def decisions(main, aux, threshold):
    """IW argmax classes, multi-level labels and kept pixels (numpy) of two softmaxes."""
    fused = (main + aux) / 2
    keep = (main.max(-1) > threshold) | (aux.max(-1) > threshold)
    return {"iw_class": main.argmax(-1), "label": fused.argmax(-1), "keep": keep}


def edge_margins(main, aux, threshold):
    """How far each decision of `decisions` is from flipping, per pixel."""
    fused = (main + aux) / 2
    confidence = np.minimum(np.abs(main.max(-1) - threshold), np.abs(aux.max(-1) - threshold))
    return {"iw_class": top2_margin(main), "label": top2_margin(fused), "keep": confidence}


def check_flips_are_at_the_edge(model, variables, target) -> bool:
    """Check 1: forwards agree to round-off; differing decisions have margins within it."""
    p8 = target_probabilities(model, variables, target, jax.devices())
    p1 = target_probabilities(model, variables, target, jax.devices()[:1])
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(p8, p1, strict=True))
    d8, d1 = decisions(*p8, LOSS["multi_threshold"]), decisions(*p1, LOSS["multi_threshold"])
    m8, m1 = edge_margins(*p8, LOSS["multi_threshold"]), edge_margins(*p1, LOSS["multi_threshold"])
    ok = gap <= 1e-4
    for name in d1:
        flipped = d8[name] != d1[name]
        margin = np.minimum(m8[name], m1[name])[flipped]
        worst = float(margin.max()) if margin.size else 0.0
        ok &= worst <= 2 * gap
        print(
            f"  {name}: {int(flipped.sum())} of {flipped.size} pixels decided differently, "
            f"largest margin among them {worst:.2e} (forward difference {gap:.2e})"
        )
    return ok


def shared_decisions(model, variables, target):
    """The 1-device forward's IW weights, multi-level labels and keep mask, as constants."""
    main, aux = target_probabilities(model, variables, target, jax.devices()[:1])
    logits = np.log(np.maximum(main, 1e-30))  # softmax(log p) = p: only its argmax is used
    weights = np.asarray(losses.iw_pixel_weights(jnp.asarray(logits), ratio=LOSS["iw_ratio"]))
    d = decisions(main, aux, LOSS["multi_threshold"])
    return weights, d["label"].astype(np.int32), d["keep"]


def run_step(model, variables, batches, devices):
    """One train step per (source, target) batch on a mesh of `devices`; returns the state."""
    mesh = sharding.make_mesh(devices)
    tx, _ = optim.make_optimizer(OPTIM, variables["params"])
    state = jax.device_put(create_train_state(variables, tx), sharding.replicated(mesh))
    step = jit_train_step(
        make_train_step(model, tx, METHODS["iw_multi"], LOSS), mesh, adapting=True
    )
    metrics = None
    with jax.default_matmul_precision("highest"):
        for source, target in batches:
            state, metrics = step(
                state, sharding.to_global(source, mesh), sharding.to_global(target, mesh)
            )
    return jax.device_get(state), jax.device_get(metrics)


def run_step_float64(model, variables, source, target):
    """The same 1-device step computed in float64: the exact step to compare with."""
    with jax.enable_x64(True):
        model64 = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        as64 = lambda tree: jax.tree.map(  # noqa: E731
            lambda x: np.asarray(x, np.float64) if np.issubdtype(x.dtype, np.floating) else x,
            tree,
        )
        return run_step(model64, as64(variables), [(as64(source), as64(target))], jax.devices()[:1])


def check_step_with_shared_decisions(model, variables, source, target) -> bool:
    """Check 2: with the decisions shared, 8 devices are as exact as 1 device."""
    weights, labels, keep = shared_decisions(model, variables, target)
    print(f"  shared decisions keep {keep.mean():.0%} of the pixels for multi-level guidance")
    original = losses.iw_pixel_weights, losses.multi_level_labels
    losses.iw_pixel_weights = lambda logits, ratio=0.2: jnp.asarray(weights, logits.dtype)
    losses.multi_level_labels = lambda main, aux, threshold=0.95: (
        jnp.asarray(labels),
        jnp.asarray(keep),
    )
    try:
        s8, m8 = run_step(model, variables, [(source, target)], jax.devices())
        s1, m1 = run_step(model, variables, [(source, target)], jax.devices()[:1])
        s64, _ = run_step_float64(model, variables, source, target)
    finally:
        losses.iw_pixel_weights, losses.multi_level_labels = original
    origin = variables["params"]
    err8, err1 = tree_rel(s8.params, s64.params, origin), tree_rel(s1.params, s64.params, origin)
    agree = {
        "batch_stats": tree_rel(s8.batch_stats, s1.batch_stats, variables["batch_stats"]),
        "loss": rel(m8["loss"], m1["loss"]),
    }
    print(
        f"  parameters vs the float64 step, relative to the update: 8 devices {err8:.2e}, "
        f"1 device {err1:.2e} (ratio {err8 / max(err1, 1e-30):.2f}); 8 vs 1: {agree}"
    )
    return err8 <= max(ERROR_RATIO * err1, ERROR_FLOOR) and max(agree.values()) <= TOLERANCE


def main():
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.RandomState(0)
    labels = rng.randint(0, CLASSES, (8, 64, 80)).astype(np.int32)
    labels[:, :3] = 255
    source = {"image": rng.randn(8, 64, 80, 3).astype(np.float32), "label": labels}
    target = {"image": rng.randn(8, 64, 80, 3).astype(np.float32)}
    ok = True
    for bn_mode in ("per_image", "batch"):
        print(f"iw+multi, BN {bn_mode}: 8 devices vs 1")
        model, variables = model_and_variables(bn_mode)
        ok &= check_flips_are_at_the_edge(model, variables, target)
        ok &= check_step_with_shared_decisions(model, variables, source, target)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

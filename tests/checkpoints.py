"""Checkpoints for tests: tiny random weights folders, and reading a run's saved train state.

The weights are drawn with NumPy from the shapes `jax.eval_shape` gives (no RNG kernel is
compiled per parameter shape: one compilation each, slow on CPU). Kernels use He scaling
instead of the original's normal(0, 0.01), so that the logits vary from pixel to pixel and
the predictions hold many classes: with the original's init a random network predicts one
class everywhere and an evaluation test could not tell a correct confusion matrix from a
transposed one.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from msjax import weights
from msjax.models import tiny_deeplabv2

BLOCKS, WIDTH = (1, 1, 1, 1), 8


def random_variables(num_classes: int, seed: int = 0):
    """(model, variables) of a tiny DeepLabV2 with He-scaled random weights."""
    model = tiny_deeplabv2(num_classes=num_classes, blocks=BLOCKS, width=WIDTH)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)), train=False)
    )
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        shape = leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        if name in ("scale", "var"):
            return np.ones(shape, np.float32)
        if name == "bias" and "conv2d_list" in str(path[-2].key):
            return rng.normal(0.0, 0.1, shape).astype(np.float32)
        return np.zeros(shape, np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, shapes)


def save_random_checkpoint(out_dir, num_classes: int = 19, seed: int = 0):
    """Writes a weights folder in the msjax.weights format; returns (model, variables)."""
    model, variables = random_variables(num_classes, seed)
    metadata = {
        "source": "random (tests)",
        "source_sha256": "",
        "layout": "original",
        "num_classes": num_classes,
        "blocks": list(BLOCKS),
        "width": WIDTH,
        "stride_on": "1x1",
        "aspp_branches": 2,
        "input_normalization": "caffe_bgr",
        "heads": f"random (seed {seed})",
    }
    weights.save(str(out_dir), variables, metadata)
    return model, variables


def saved_train_state(workdir, step: int, like=None):
    """A run's saved TrainState at `step` as nested numpy arrays (params, BN, optimiser, step).

    `like` (a numpy tree of the same structure) is needed when the checkpoint was written
    by another topology, e.g. two processes: it is then restored onto one local device.
    """
    target = None
    if like is not None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like
        )
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
    return jax.tree.map(np.asarray, restored.state)

"""One data-parallel mesh over every device of every host, and how arrays are placed on it.

Parameters, BN statistics and optimiser state are replicated; batches are split along their
first axis over the `data` axis. Each host feeds the examples of its own shard and
`to_global` assembles one global jax.Array per batch, so the jitted step sees the global
batch on 1 CPU, 8 GPUs or a pod alike.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from msjax.errors import ConfigError

DATA_AXIS = "data"
# The most image pairs a device trains on per step: an upper bound checked before any work,
# so that a mistyped batch is a message rather than a process the kernel kills. The
# original trains one pair per step; 64 pairs of 1280x720 crops are far past any device's
# memory already.
MAX_PAIRS_PER_DEVICE = 64


def make_mesh(devices=None) -> Mesh:
    """A one-axis ('data',) mesh over `devices` (default: all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def platform(mesh: Mesh) -> str:
    """The platform ('cpu', 'gpu', 'tpu') of the mesh's devices: what its programs compile for.

    Devices of an ahead-of-time topology (`jax.experimental.topologies`) count as well, so a
    CPU host compiling for a TPU mesh makes the TPU's choices.
    """
    return mesh.devices.flat[0].platform


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Split along the first (batch) axis over the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_global_batch(global_batch: int, mesh: Mesh, field: str = "config.batch_pairs") -> None:
    """Raises ConfigError unless the global batch is positive, divisible by the device count
    and at most MAX_PAIRS_PER_DEVICE pairs per device."""
    devices = mesh.devices.size
    if global_batch < 1 or global_batch % devices:
        raise ConfigError(
            f"{field}={global_batch}: the global batch must be a positive multiple of the "
            f"number of devices ({devices}: {mesh.devices.flat[0].platform}); e.g. {devices}."
        )
    if global_batch // devices > MAX_PAIRS_PER_DEVICE:
        raise ConfigError(
            f"{field}={global_batch}: {global_batch // devices} pairs per device on "
            f"{devices} device(s), more than the {MAX_PAIRS_PER_DEVICE} msjax trains on one."
        )
    if global_batch % jax.process_count():
        raise ConfigError(
            f"{field}={global_batch} is not divisible by the number of hosts "
            f"({jax.process_count()})."
        )


def to_global(local_batch, mesh: Mesh):
    """Host-local numpy batch (this host's rows) -> global jax.Arrays sharded on the batch axis."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )

"""The environment of the subprocesses tests start: the session's XLA flags plus their own.

A test that forces several CPU devices must keep whatever XLA_FLAGS the whole suite runs
with (for example the second instruction-set path of docs/reliability.md), not replace them.
"""

import os

from msjax.xla import merge_flags


def xla_flags_with(*flags: str) -> str:
    """The current XLA_FLAGS with `flags` added."""
    merged = os.environ.get("XLA_FLAGS", "")
    for flag in flags:
        merged = merge_flags(merged, flag)
    return merged


def with_devices(count: int) -> dict:
    """An environment for a subprocess with `count` forced CPU devices."""
    flag = f"--xla_force_host_platform_device_count={count}"
    return dict(os.environ, XLA_FLAGS=xla_flags_with(flag))

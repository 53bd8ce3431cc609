"""Shared pytest set-up: CPU-only JAX with a persistent compilation cache.

Model construction and jitted steps compile many small kernels on XLA:CPU; caching them on
disk makes a second run of the suite several times faster (docs/performance.md).
Every compilation is cached, however quick: the trainer tests build the same jitted
functions again in each run, and the cache turns those compilations into disk reads. The
settings are environment variables, so the subprocesses the tests start (the command line,
killed runs, two-process jobs) share the cache too.
"""

import os

_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
    """The generated synthetic data sets at the smoke size (128x64), 24 examples a split."""
    from msjax.data.preparation import prepare_one

    path = str(tmp_path_factory.mktemp("smoke_data"))
    for dataset in ("synthetic_source", "synthetic_target"):
        prepare_one(dataset, "128x64", path, max_examples=24)
    return path

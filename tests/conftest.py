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


def pytest_collection_modifyitems(config, items):
    """Files with more slow tests first, the rest after, each file's tests in their order.

    pytest-xdist's `--dist loadfile` hands whole files to its workers in collection order.
    Alphabetical order left several long subprocess files (the two-process job, the 8-device
    step, the demo run) to the end of one worker while the other had finished a minute and a
    half earlier (docs/reliability.md); started first, they overlap and the short files fill
    the end. Nothing is skipped or changed, only the order of files.
    """
    slow_per_file: dict[str, int] = {}
    for item in items:
        count = slow_per_file.setdefault(item.nodeid.split("::")[0], 0)
        slow_per_file[item.nodeid.split("::")[0]] = count + bool(item.get_closest_marker("slow"))
    rank = {f: i for i, f in enumerate(sorted(slow_per_file, key=lambda f: -slow_per_file[f]))}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])

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

    pytest-xdist's `--dist loadfile` hands whole files to its workers in collection order
    when `--no-loadscope-reorder` is given (pyproject.toml). Its default order, most tests
    first, left the long subprocess files (the two-process job, the 8-device step, the demo
    run) to the end of one worker, which finished two and a half minutes after the other
    (docs/reliability.md). Started first, they overlap and the short files fill the end.
    Nothing is skipped or changed, only the order of files.
    """

    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    slow_tests: dict[str, int] = {}
    for item in items:
        is_slow = item.get_closest_marker("slow") is not None
        slow_tests[file_of(item)] = slow_tests.get(file_of(item), 0) + is_slow
    rank = {f: i for i, f in enumerate(sorted(slow_tests, key=lambda f: -slow_tests[f]))}
    items.sort(key=lambda item: rank[file_of(item)])

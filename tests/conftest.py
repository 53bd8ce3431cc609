"""Shared pytest set-up: CPU-only JAX with a persistent compilation cache, and the tiers.

Model construction and jitted steps compile many small kernels on XLA:CPU; caching them on
disk makes a second run of the suite several times faster (docs/performance.md).
Every compilation is cached, however quick: the trainer tests build the same jitted
functions again in each run, and the cache turns those compilations into disk reads. The
settings are environment variables, so the subprocesses the slow tests start (the command
line, killed runs, two-process jobs) share the cache too.

The fast tier (`-m "not slow"`) starts no process: a test that does (subprocess, os.fork,
multiprocessing) must be marked slow, and fails here otherwise.
"""

import os

_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache")

# Must be set before jax is imported anywhere in the test run.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


import contextlib  # noqa: E402
import multiprocessing.process  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402

# TensorFlow's import asks platform.processor(), which runs `uname -p` once per process and
# caches it: ask now, so that whichever test imports TensorFlow first starts no process.
platform.processor()

import pytest  # noqa: E402

# Every way a test could start a process: subprocess.run/Popen/check_output and os.popen all
# end in Popen._execute_child; multiprocessing (Process, Pool, ProcessPoolExecutor) in
# BaseProcess.start.
_PROCESS_STARTERS = [
    (subprocess.Popen, "_execute_child"),
    (multiprocessing.process.BaseProcess, "start"),
    *((os, name) for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp")),
]


@contextlib.contextmanager
def _no_new_processes(item):
    def refuse(*args, **kwargs):
        pytest.fail(
            f"{item.nodeid} starts a process: mark it @pytest.mark.slow (the fast tier runs "
            "none), or call the command's main(argv) in this process."
        )

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _PROCESS_STARTERS:
            if hasattr(owner, name):
                patch.setattr(owner, name, refuse)
        yield


def _fast_tier_guard(item):
    if item.get_closest_marker("slow") is not None:
        return contextlib.nullcontext()
    return _no_new_processes(item)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _fast_tier_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _fast_tier_guard(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    with _fast_tier_guard(item):
        return (yield)


@pytest.fixture(scope="session")
def smoke_data_dir(tmp_path_factory):
    """The generated synthetic data sets at the smoke size (128x64), 24 examples a split."""
    from msjax.data.preparation import prepare_one

    path = str(tmp_path_factory.mktemp("smoke_data"))
    for dataset in ("synthetic-source", "synthetic-target"):
        prepare_one(dataset, "128x64", path, max_examples=24)
    return path

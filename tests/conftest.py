"""Shared pytest set-up: CPU-only JAX with a persistent compilation cache.

Model construction and jitted steps compile many small kernels on XLA:CPU; caching them on
disk makes a second run of the suite several times faster (see ../shared/ENVIRONMENT.md).
"""

import os

# Must be set before jax is imported anywhere in the test session.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), ".jax_cache")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

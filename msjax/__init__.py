"""msjax: domain adaptation for semantic segmentation with the maximum squares loss, in JAX.

Entry points: `python -m msjax.train` (training and the demo), `msjax.evaluate`,
`msjax.predict`, `msjax.convert` (PyTorch weights), `msjax.prepare` (data sets) and
`msjax.models` (architecture summary). See README.md.
"""

from msjax import xla_flags as _xla_flags

__version__ = "0.1.0"

# Before anything can start a JAX backend: XLA reads its flags once (msjax/xla_flags.py).
_xla_flags.apply_defaults()

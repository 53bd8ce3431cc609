"""msjax: domain adaptation for semantic segmentation with the maximum squares loss, in JAX.

Entry points: `python -m msjax.train` (training and the demo), `msjax.evaluate`,
`msjax.predict`, `msjax.convert` (PyTorch weights), `msjax.prepare` (data sets) and
`msjax.models` (architecture summary). See README.md.
"""

__version__ = "0.1.0"

"""msjax: domain adaptation for semantic segmentation with the maximum squares loss, in JAX.

Commands (each `python -m msjax.NAME --help`): `train` (one training run from a config),
`demo` (the CPU demo), `reproduce` (a paper experiment end to end), `evaluate`, `predict`,
`prepare` (data sets) and `convert` (PyTorch weights). The library lives in the packages
`msjax.models`, `msjax.data`, `msjax.training`, `msjax.evaluation`, `msjax.weights` and
`msjax.reproduction` (the paper's rows as chains of runs);
`docs/design.md` draws how they fit together.

Importing msjax changes nothing outside it: no environment variable, no JAX setting.
"""

__version__ = "0.1.0"

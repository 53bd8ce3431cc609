"""Weights: the msjax weights folder format, and conversion from the original's PyTorch files.

    from msjax.weights import load
    model, variables = load("weights/gta5_source", bn_mode="per_image")

- `folder`: the format (Orbax checkpoint + metadata.json), written atomically and loaded
  strictly (every missing, unexpected or wrongly shaped variable is named);
- `names`: PyTorch state_dict names <-> Flax paths (no torch needed);
- `pytorch`: reading .pth files of the four layouts (needs torch: the `convert` extra).
"""

from msjax.errors import WeightsError
from msjax.weights.folder import (
    ARCHITECTURE_FIELDS,
    HEADS,
    METADATA_FILE,
    load,
    model_from_metadata,
    read_metadata,
    save,
)

__all__ = [
    "ARCHITECTURE_FIELDS",
    "HEADS",
    "METADATA_FILE",
    "WeightsError",
    "load",
    "model_from_metadata",
    "read_metadata",
    "save",
]

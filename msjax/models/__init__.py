"""Flax models of msjax: DeepLabV2 with a dilated ResNet backbone."""

from msjax.models.deeplabv2 import ASPP_DILATIONS, DeepLabV2, tiny_deeplabv2
from msjax.models.layers import ATROUS_IMPLS, BN_MODES
from msjax.models.resnet import REMAT_POLICIES, RESNET101_BLOCKS, STRIDE_PLACEMENTS, feature_size

__all__ = [
    "ASPP_DILATIONS",
    "ATROUS_IMPLS",
    "BN_MODES",
    "DeepLabV2",
    "REMAT_POLICIES",
    "RESNET101_BLOCKS",
    "STRIDE_PLACEMENTS",
    "feature_size",
    "tiny_deeplabv2",
]

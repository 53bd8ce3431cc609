"""DeepLabV2: dilated ResNet-101 with two ASPP classifier heads, as the original runs it.

`DeepLabV2(...).apply(variables, images, train=...)` returns `(main_logits, aux_logits)`,
both float32 NHWC at the input's height and width. The main head (`layer6`) reads layer4,
the auxiliary head (`layer5`) reads layer3. Images must already be normalised the way the
weights expect (see the converter's metadata).

Faithful quirk: the original's ASPP module returns after adding its second branch, so only
the dilation-6 and dilation-12 branches contribute (`aspp_branches=2`). Branches 3 and 4
still exist as parameters (they are in every released checkpoint and in the parameter
count), but they never touch the output and receive no gradient. `aspp_branches=4` sums
all four (not the original's behaviour).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from msjax.models.layers import (
    ATROUS_IMPLS,
    BN_MODES,
    BatchNorm,
    Conv,
    Dtype,
    resize_bilinear_align_corners,
    resolve_atrous,
    wants_fusion_barriers,
)
from msjax.models.resnet import RESNET101_BLOCKS, dilated_resnet

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
    """Parallel 3x3 dilated convolutions (with bias) to class logits, summed.

    Attributes:
      num_classes: output channels.
      branches: how many of the four branches are summed (2 faithful, or 4).
    """

    num_classes: int
    branches: int = 2
    conv: type[Conv] | functools.partial = Conv

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        convs = [
            self.conv(
                self.num_classes, 3, padding=d, dilation=d, use_bias=True, name=f"conv2d_list_{i}"
            )
            for i, d in enumerate(ASPP_DILATIONS)
        ]
        out = sum(conv(x) for conv in convs[: self.branches])
        if self.is_initializing():
            # Create the unused branches' parameters (they belong to the checkpoint format),
            # without putting them in the forward computation.
            for conv in convs[self.branches :]:
                conv(x)
        return out


class DeepLabV2(nn.Module):
    """DeepLabV2-ResNet with an auxiliary (layer3) and a main (layer4) ASPP head.

    Attributes:
      num_classes: classes of both heads (19, 16 or 13 in the paper's settings).
      blocks: bottleneck blocks per layer; (3, 4, 23, 3) is ResNet-101.
      width: layer1 width (64); tests use small widths.
      stride_on: '1x1' (faithful, Caffe weights) or '3x3' (torchvision weights).
      aspp_branches: 2 (faithful) or 4.
      bn_mode: 'per_image' (faithful), 'batch' or 'frozen'.
      atrous: dilated convolution implementation, 'native', 'space_to_batch' or 'auto'
        (the platform's choice: layers.AUTO_ATROUS).
      dtype: compute dtype (float32 for parity, bfloat16 for speed).
      param_dtype: parameter dtype (float32).
      remat: recompute each bottleneck's activations in the backward pass (saves memory,
        costs about one extra forward pass; same numbers and parameter names).
      remat_policy: what a rematerialised bottleneck keeps besides its input: 'nothing',
        or 'convs' (its convolution outputs: only BN and ReLU are recomputed).
      platform: the platform the model is compiled for ('cpu', 'gpu', 'tpu'), which decides
        `atrous='auto'` and the XLA:CPU fusion barriers; msjax passes the platform of the
        devices it compiles for (`msjax.sharding.platform`), so one host can compile for
        another. None: `jax.default_backend()` when traced.
    """

    num_classes: int = 19
    blocks: Sequence[int] = RESNET101_BLOCKS
    width: int = 64
    stride_on: str = "1x1"
    aspp_branches: int = 2
    bn_mode: str = "per_image"
    atrous: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False
    remat_policy: str = "nothing"
    platform: str | None = None

    @property
    def compile_platform(self) -> str:
        """`platform`, or this process's default backend when it is None."""
        return self.platform or jax.default_backend()

    def _check_fields(self) -> None:
        def bad(field, value, allowed):
            return ValueError(f"DeepLabV2.{field} must be one of {allowed}, got {value!r}")

        if self.bn_mode not in BN_MODES:
            raise bad("bn_mode", self.bn_mode, BN_MODES)
        if self.atrous not in ATROUS_IMPLS:
            raise bad("atrous", self.atrous, ATROUS_IMPLS)
        if self.aspp_branches not in (2, 4):
            raise bad("aspp_branches", self.aspp_branches, (2, 4))
        if self.num_classes < 1:
            raise ValueError(f"DeepLabV2.num_classes must be >= 1, got {self.num_classes}")

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Args: images [N, H, W, 3] normalised. Returns (main, aux) logits [N, H, W, C]."""
        self._check_fields()
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"DeepLabV2 expects NHWC images [N, H, W, 3], got {images.shape}")
        platform = self.compile_platform
        conv = functools.partial(
            Conv,
            atrous=resolve_atrous(self.atrous, platform),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        norm = functools.partial(
            BatchNorm, mode=self.bn_mode, dtype=self.dtype, param_dtype=self.param_dtype
        )
        feat3, feat4 = dilated_resnet(
            images,
            train=train,
            blocks=self.blocks,
            width=self.width,
            stride_on=self.stride_on,
            conv=conv,
            norm=norm,
            remat=self.remat,
            remat_policy=self.remat_policy,
            fusion_barriers=wants_fusion_barriers(platform),
        )
        head = functools.partial(
            ASPPClassifier, self.num_classes, branches=self.aspp_branches, conv=conv
        )
        aux = head(name="layer5")(feat3)
        main = head(name="layer6")(feat4)
        h, w = images.shape[1:3]
        return (
            resize_bilinear_align_corners(main, h, w),
            resize_bilinear_align_corners(aux, h, w),
        )


def tiny_deeplabv2(**kwargs) -> DeepLabV2:
    """A small variant (blocks [1,1,1,1], width 8) for tests and the CPU demo."""
    kwargs.setdefault("blocks", (1, 1, 1, 1))
    kwargs.setdefault("width", 8)
    return DeepLabV2(**kwargs)

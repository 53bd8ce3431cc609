"""The dilated ResNet backbone of DeepLabV2 (Caffe-style strides, output stride 8).

Layout, as in the original (docs/original.md, "Model"):
  conv1 7x7/2 -> bn1 -> relu -> max-pool 3x3/2 (ceil mode)
  layer1: width w,   stride 1
  layer2: width 2w,  stride 2
  layer3: width 4w,  stride 1, dilation 2 (all blocks)
  layer4: width 8w,  stride 1, dilation 4 (all blocks)
Bottleneck blocks expand by 4. `stride_on='1x1'` puts the stride on the first 1x1 conv (the
Caffe-converted DeepLab weights); `'3x3'` puts it on the 3x3 conv (torchvision weights).

Submodules get the PyTorch state_dict names (`conv1`, `bn1`, `layer3_5`, `downsample_0`, ...)
so a checkpoint converts by renaming `layer3.5.conv2.weight` to `layer3_5/conv2/kernel`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax

from msjax.models.layers import CONV_OUTPUT, BatchNorm, Conv, materialize, max_pool_ceil

EXPANSION = 4
RESNET101_BLOCKS = (3, 4, 23, 3)
STRIDE_PLACEMENTS = ("1x1", "3x3")
# What a rematerialised bottleneck keeps for the backward pass besides its input: nothing
# (everything inside is recomputed), or its convolutions' outputs (only BatchNorm's
# normalisation and the ReLUs are recomputed; no convolution runs twice).
REMAT_POLICIES = {
    "nothing": None,
    "convs": jax.checkpoint_policies.save_only_these_names(CONV_OUTPUT),
}


def layer_specs(blocks: Sequence[int], width: int) -> list[tuple[int, int, int, int]]:
    """(num_blocks, planes, stride, dilation) of layer1..layer4."""
    if len(blocks) != 4:
        raise ValueError(f"blocks must list 4 block counts (layer1..layer4), got {blocks!r}")
    planes = (width, 2 * width, 4 * width, 8 * width)
    strides = (1, 2, 1, 1)
    dilations = (1, 1, 2, 4)
    return list(zip(blocks, planes, strides, dilations, strict=True))


class Bottleneck(nn.Module):
    """1x1 -> BN -> ReLU -> 3x3 (dilated) -> BN -> ReLU -> 1x1 -> BN, + shortcut, ReLU."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    stride_on: str = "1x1"
    conv: type[Conv] | functools.partial = Conv
    norm: type[BatchNorm] | functools.partial = BatchNorm
    fusion_barrier: bool = False

    # `train` may be passed positionally: `nn.remat` needs it as a static positional argument
    # (jax.checkpoint would trace a keyword argument and the Python `if train` would fail).
    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s1 = self.stride if self.stride_on == "1x1" else 1
        s3 = self.stride if self.stride_on == "3x3" else 1
        d = self.dilation
        out = self.conv(self.planes, 1, stride=s1, name="conv1")(x)
        out = nn.relu(self.norm(name="bn1")(out, train=train))
        out = self.conv(self.planes, 3, stride=s3, padding=d, dilation=d, name="conv2")(out)
        out = nn.relu(self.norm(name="bn2")(out, train=train))
        out = self.conv(self.planes * EXPANSION, 1, name="conv3")(out)
        out = self.norm(name="bn3")(out, train=train)
        if self.downsample:
            x = self.conv(self.planes * EXPANSION, 1, stride=self.stride, name="downsample_0")(x)
            x = self.norm(name="downsample_1")(x, train=train)
        # Stored once: without the barrier XLA:CPU recomputes the residual path of every
        # earlier block inside each later one (msjax/xla.py).
        return materialize(nn.relu(out + x), self.fusion_barrier)


def dilated_resnet(
    x: jax.Array,
    *,
    train: bool,
    blocks: Sequence[int],
    width: int,
    stride_on: str,
    conv,
    norm,
    remat: bool = False,
    remat_policy: str = "nothing",
    fusion_barriers: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Runs the backbone; call it inside a parent module's `@nn.compact` method.

    The submodules it creates attach to that parent, so their parameters sit at the top
    level of the parent's tree (`conv1`, `layer1_0`, ...), mirroring the PyTorch names.
    With `remat`, every bottleneck keeps only its input for the backward pass and recomputes
    its inside (same numbers, about one more forward pass of compute, a fraction of the
    activation memory), keeping also what `remat_policy` names (REMAT_POLICIES); parameter
    names do not change. `fusion_barriers` stores each block's
    output behind a barrier (`layers.materialize`: XLA:CPU needs it).

    Returns:
      (layer3 output, layer4 output): [N, h, w, 16*width] and [N, h, w, 32*width], h and w
      the input size / 8 (rounded as the original's ceil-mode pooling and strided 1x1 do).
    """
    if stride_on not in STRIDE_PLACEMENTS:
        raise ValueError(f"stride_on must be one of {STRIDE_PLACEMENTS}, got {stride_on!r}")
    x = conv(width, 7, stride=2, padding=3, name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x, train=train))
    x = max_pool_ceil(x)
    # static_argnums counts `self`: argument 2 is `train`, a Python bool.
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"remat_policy must be one of {tuple(REMAT_POLICIES)}, got {remat_policy!r}"
        )
    policy = REMAT_POLICIES[remat_policy]
    block = nn.remat(Bottleneck, static_argnums=(2,), policy=policy) if remat else Bottleneck
    features = []
    for layer, (num_blocks, planes, stride, dilation) in enumerate(
        layer_specs(blocks, width), start=1
    ):
        for i in range(num_blocks):
            x = block(
                planes,
                stride=stride if i == 0 else 1,
                dilation=dilation,
                downsample=i == 0,
                stride_on=stride_on,
                conv=conv,
                norm=norm,
                fusion_barrier=fusion_barriers,
                name=f"layer{layer}_{i}",
            )(x, train)
        features.append(x)
    return features[2], features[3]


def feature_size(n: int) -> int:
    """Spatial size of the backbone's output (output stride 8) for an input side of n.

    conv1 (7x7/2, pad 3) -> ceil-mode max-pool (3x3/2, pad 1) -> layer2's strided 1x1.
    """
    n = (n - 1) // 2 + 1
    n = -(-(n - 1) // 2) + 1
    return -(-n // 2)

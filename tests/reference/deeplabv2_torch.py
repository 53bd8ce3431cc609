"""PyTorch reference of the original DeepLabV2-ResNet, written from docs/original.md.

Test-only. It reproduces the original network's behaviour and state_dict names
(`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`, `.downsample.{0,1}`,
`layer5/layer6.conv2d_list.{0..3}`), including its quirks: stride on the first 1x1 conv,
ceil-mode max-pool, the ASPP module that returns after its second branch, and
align_corners=True upsampling of both heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, stride_on="1x1"):
        super().__init__()
        s1 = stride if stride_on == "1x1" else 1
        s3 = stride if stride_on == "3x3" else 1
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=s3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ClassifierModule(nn.Module):
    """The original's ASPP head, with its early return after the second branch."""

    def __init__(self, inplanes, num_classes, branches=2):
        super().__init__()
        self.branches = branches
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=d, dilation=d, bias=True)
            for d in (6, 12, 18, 24)
        )
        for m in self.conv2d_list:
            m.weight.data.normal_(0, 0.01)

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for i in range(1, len(self.conv2d_list)):
            out = out + self.conv2d_list[i](x)
            if i + 1 == self.branches:
                return out
        return out


class DeepLabV2Torch(nn.Module):
    def __init__(
        self, num_classes=19, blocks=(3, 4, 23, 3), width=64, stride_on="1x1", aspp_branches=2
    ):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        specs = [(1, 1), (2, 1), (1, 2), (1, 4)]
        for idx, (n, (stride, dilation)) in enumerate(zip(blocks, specs, strict=True), start=1):
            layer = self._make_layer(width * 2 ** (idx - 1), n, stride, dilation, stride_on)
            setattr(self, f"layer{idx}", layer)
        head_in3, head_in4 = width * 4 * EXPANSION, width * 8 * EXPANSION
        self.layer5 = ClassifierModule(head_in3, num_classes, aspp_branches)
        self.layer6 = ClassifierModule(head_in4, num_classes, aspp_branches)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _make_layer(self, planes, blocks, stride, dilation, stride_on):
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * EXPANSION),
        )
        layers = [Bottleneck(self.inplanes, planes, stride, dilation, downsample, stride_on)]
        self.inplanes = planes * EXPANSION
        for _ in range(1, blocks):
            layers.append(Bottleneck(self.inplanes, planes, dilation=dilation, stride_on=stride_on))
        return nn.Sequential(*layers)

    def forward(self, x):
        size = x.shape[2:]
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        feat3 = self.layer3(x)
        feat4 = self.layer4(feat3)
        aux = F.interpolate(self.layer5(feat3), size=size, mode="bilinear", align_corners=True)
        main = F.interpolate(self.layer6(feat4), size=size, mode="bilinear", align_corners=True)
        return main, aux


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every parameter and BN statistic non-trivial values, for parity tests.

    Conv weights are He-scaled so that activations neither vanish nor explode through 100
    layers in eval mode; BN affine and running statistics are drawn away from (1, 0, 0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model


def _backbone_keys(state_dict):
    return {k: v for k, v in state_dict.items() if not k.startswith(("layer5.", "layer6."))}


def save_in_layout(model: DeepLabV2Torch, layout: str, path: str, seed: int = 0) -> None:
    """Saves `model` the way each of the four known weight files is laid out.

    - original: the plain state_dict.
    - released: a training checkpoint dict whose state_dict keys carry `module.`.
    - deeplab-init: backbone keys under a wrapper prefix (`Scale.`), plus that file's own
      head `layer5` on layer4 (which the converter must skip).
    - torchvision: backbone keys plus an ImageNet `fc` layer (the model should have been built
      with stride_on='3x3').
    """
    sd = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    if layout == "original":
        obj = sd
    elif layout == "released":
        obj = {
            "epoch": 3,
            "iteration": 8925,
            "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4, "momentum": 0.9}]},
            "best_MIou": 0.4431,
        }
    elif layout == "deeplab-init":
        obj = {f"Scale.{k}": v for k, v in _backbone_keys(sd).items()}
        in_ch = sd["layer4.0.conv3.weight"].shape[0]
        for i in range(4):
            obj[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.randn(21, in_ch, 3, 3, generator=g)
            obj[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.randn(21, generator=g)
    elif layout == "torchvision":
        obj = dict(_backbone_keys(sd))
        in_ch = sd["layer4.0.conv3.weight"].shape[0]
        obj["fc.weight"] = torch.randn(1000, in_ch, generator=g)
        obj["fc.bias"] = torch.randn(1000, generator=g)
    else:
        raise ValueError(layout)
    torch.save(obj, path)


def load_flax_heads_(model: DeepLabV2Torch, params) -> DeepLabV2Torch:
    """Copies msjax head parameters (layer5/layer6, HWIO kernels) into the torch model.

    Used for weight files without heads, whose heads msjax initialises fresh: the parity
    test then compares whole networks.
    """
    import numpy as np

    with torch.no_grad():
        for head in ("layer5", "layer6"):
            for i, conv in enumerate(getattr(model, head).conv2d_list):
                p = params[head][f"conv2d_list_{i}"]
                conv.weight.copy_(torch.from_numpy(np.array(p["kernel"]).transpose(3, 2, 0, 1)))
                conv.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    return model


def forward_nhwc(model: DeepLabV2Torch, images_nhwc, per_image: bool):
    """(main, aux) as NHWC numpy; `per_image` runs the images one at a time (batch size 1)."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if per_image:
            outs = [model(x[i : i + 1]) for i in range(x.shape[0])]
            main, aux = (torch.cat([o[j] for o in outs]) for j in range(2))
        else:
            main, aux = model(x)
    return main.numpy().transpose(0, 2, 3, 1), aux.numpy().transpose(0, 2, 3, 1)

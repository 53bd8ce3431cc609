"""`python -m msjax.models`: build DeepLabV2-ResNet101, run it once, print its size and shapes.

A check that the install works and a quick reference for the architecture:

    python -m msjax.models [--num-classes 19] [--height 321] [--width 321] [--bn-mode per_image]

It initialises the full model with the original's random initialisation (no weights are
downloaded), runs one training-mode forward pass on random input, and prints the parameter
count per part, the feature-map size, the output shapes and the time taken.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from msjax.models import BN_MODES, DeepLabV2, feature_size


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msjax.models", description=__doc__)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--height", type=int, default=321)
    parser.add_argument("--width", type=int, default=321)
    parser.add_argument("--bn-mode", default="per_image", choices=BN_MODES)
    args = parser.parse_args(argv)

    model = DeepLabV2(num_classes=args.num_classes, bn_mode=args.bn_mode)
    images = jax.random.normal(jax.random.key(1), (1, args.height, args.width, 3))
    start = time.perf_counter()
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(
        images[:, :33, :33]
    )
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    (main_logits, aux_logits), _ = forward(variables, images)
    main_logits.block_until_ready()
    elapsed = time.perf_counter() - start

    params = variables["params"]
    heads = {h: _count(params[h]) for h in ("layer5", "layer6")}
    total = _count(params)
    print(f"DeepLabV2-ResNet101, {args.num_classes} classes, BN mode {args.bn_mode}")
    print(f"  parameters      {total:>12,}")
    print(f"    backbone      {total - sum(heads.values()):>12,}")
    print(f"    layer5 (aux)  {heads['layer5']:>12,}   ASPP on layer3")
    print(f"    layer6 (main) {heads['layer6']:>12,}   ASPP on layer4")
    print(f"  BN statistics   {_count(variables['batch_stats']):>12,}")
    print(f"  input           {tuple(images.shape)}")
    print(f"  features        {feature_size(args.height)} x {feature_size(args.width)} (stride 8)")
    print(f"  main logits     {tuple(main_logits.shape)} {main_logits.dtype}")
    print(f"  aux logits      {tuple(aux_logits.shape)} {aux_logits.dtype}")
    print(f"  finite          {bool(jnp.isfinite(main_logits).all())}")
    print(f"  init + compile + forward on {jax.devices()[0].platform}: {elapsed:.1f} s")


if __name__ == "__main__":
    main()

"""Draw the paper's argument: entropy minimisation lets easy pixels dominate, max squares less.

Binary case, as in section 3 of the paper: a pixel predicts its class with probability p and
the other class with 1 - p. Logits (log p, log(1 - p)) have softmax exactly (p, 1 - p), so
``jax.grad`` of msjax's own ``entropy`` and ``max_square`` with respect to p gives each
loss's gradient magnitude |dL/dp| per pixel. Left panel: |dL/dp| against p. Middle: a
realistic mixture of confidences on target images (most pixels confident, a minority
uncertain). Right: the share of the total gradient that easy pixels (p > 0.9) receive under
each loss, against their share of the pixels.

Usage (CPU, a few seconds; no torch, no tensorflow):
  .venv/bin/python scripts/plot_gradient_balance.py --out docs/gradient_balance.png
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # file output only: no display on CI or the GPU machine
import matplotlib.pyplot as plt  # noqa: E402

from msjax import losses  # noqa: E402

EASY = 0.9
LOSSES = {"entropy (MinEnt)": losses.entropy, "max squares": losses.max_square}
COLORS = {"entropy (MinEnt)": "tab:red", "max squares": "tab:blue"}


def per_pixel_grad_wrt_p(loss_fn, p):
    """|dL/dp| of every pixel for a binary prediction with class probabilities (p, 1 - p).

    Args:
      loss_fn: an msjax loss taking NHWC logits and returning the mean over pixels.
      p: float ``[M]`` probabilities of the predicted class, in (0, 1).

    Returns:
      numpy float64 ``[M]``: the magnitude of each pixel's gradient, scaled back by M (the
      loss averages over pixels) so it does not depend on how many pixels are drawn.
    """
    p = jnp.asarray(p, jnp.float32)

    def loss_of_p(p):
        logits = jnp.stack([jnp.log(p), jnp.log1p(-p)], axis=-1)
        return loss_fn(logits.reshape(1, 1, -1, 2))  # [N=1, H=1, W=M, C=2]

    grad = jax.jit(jax.grad(loss_of_p))(p)
    return np.abs(np.asarray(grad, np.float64)) * p.shape[0]


def confidence_mixture(num_pixels, easy_fraction, seed):
    """Predicted-class probabilities of a model adapted halfway: mostly sure, some unsure.

    A fraction ``easy_fraction`` of pixels is confident, with 1 - p log-uniform in
    [1e-4, 1e-1] (p from 0.9 to 0.9999: road, sky, building interiors); the rest is
    uncertain, p uniform in [0.5, 0.9] (boundaries, rare and shifted classes).
    """
    rng = np.random.default_rng(seed)
    easy = rng.random(num_pixels) < easy_fraction
    sure = 1.0 - 10.0 ** rng.uniform(-4.0, -1.0, num_pixels)
    unsure = rng.uniform(0.5, EASY, num_pixels)
    return np.where(easy, sure, unsure)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/gradient_balance.png", help="PNG to write")
    parser.add_argument("--pixels", type=int, default=200_000, help="pixels in the mixture")
    parser.add_argument("--easy-fraction", type=float, default=0.7, help="confident share")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def gradient_split(p_mix, easy):
    """Per loss: the easy pixels' share of the total gradient, and their mean gradient over
    the hard pixels' mean; returns (shares, ratios), dicts keyed by loss name."""
    shares, ratios = {}, {}
    for name, fn in LOSSES.items():
        g = per_pixel_grad_wrt_p(fn, p_mix)
        shares[name] = g[easy].sum() / g.sum()
        ratios[name] = g[easy].mean() / g[~easy].mean()
    return shares, ratios


def print_table(pixels, pixel_share, shares, ratios):
    print(f"Mixture of {pixels} pixels, {pixel_share:.1%} easy (p > {EASY}).")
    print(f"| {'loss':<17} | easy-pixel share of gradient | mean grad easy / hard |")
    print(f"|{'-' * 19}|{'-' * 30}|{'-' * 23}|")
    print(f"| {'(share of pixels)':<17} | {pixel_share:>28.1%} | {1.0:>21.2f} |")
    for name in LOSSES:
        print(f"| {name:<17} | {shares[name]:>28.1%} | {ratios[name]:>21.2f} |")


def draw_curves(ax, p_curve, curves):
    """Left panel: each loss's gradient magnitude against p, with its value at p = 0.99."""
    for name, g in curves.items():
        ax.plot(p_curve, g, color=COLORS[name], lw=2, label=name)
    ax.axvspan(EASY, 1.0, color="0.9", zorder=0, label=f"easy pixels (p > {EASY})")
    ax.set(
        xlim=(0.5, 1.0),
        ylim=(0, None),
        xlabel="probability p of the predicted class",
        ylabel="gradient magnitude |dL/dp| per pixel",
        title="Gradient vs confidence (binary case)",
    )
    for name, g in curves.items():
        at = np.searchsorted(p_curve, 0.99)
        ax.annotate(
            f"{g[at]:.2f} at p = 0.99",
            (p_curve[at], g[at]),
            xytext=(-105, 8),
            textcoords="offset points",
            color=COLORS[name],
            arrowprops={"arrowstyle": "->", "color": COLORS[name]},
        )
    ax.legend(loc="upper left")


def draw_mixture(ax, p_mix, easy, pixel_share):
    """Middle panel: histogram of the mixture's confidences, easy and hard pixels."""
    bins = np.linspace(0.5, 1.0, 51)
    ax.hist(p_mix[~easy], bins=bins, color="tab:orange", label="hard")
    ax.hist(p_mix[easy], bins=bins, color="tab:green", label="easy")
    ax.set(
        xlabel="probability p of the predicted class",
        ylabel="pixels (log scale)",
        ylim=(300, None),
        yscale="log",
        title=f"Confidence mixture ({pixel_share:.0%} easy)",
    )
    ax.legend(loc="upper left")


def draw_shares(ax, pixel_share, shares):
    """Right panel: the easy pixels' share of the pixels and of each loss's gradient."""
    names = ["share of\npixels", "entropy\ngradient", "max squares\ngradient"]
    values = [pixel_share, shares["entropy (MinEnt)"], shares["max squares"]]
    bars = ax.bar(names, values, color=["0.6", COLORS["entropy (MinEnt)"], "tab:blue"])
    ax.bar_label(bars, labels=[f"{v:.1%}" for v in values], padding=3)
    ax.set(ylim=(0, 1.08), ylabel="share going to easy pixels", title="Who gets the gradient")


def main():
    args = parse_args()

    # Curves: gradient magnitude as a function of the predicted probability.
    p_curve = np.linspace(0.5, 0.9999, 2000)
    curves = {name: per_pixel_grad_wrt_p(fn, p_curve) for name, fn in LOSSES.items()}

    # Mixture: how the total gradient splits between easy and hard pixels.
    p_mix = confidence_mixture(args.pixels, args.easy_fraction, args.seed)
    easy = p_mix > EASY
    shares, ratios = gradient_split(p_mix, easy)
    pixel_share = easy.mean()
    print_table(args.pixels, pixel_share, shares, ratios)

    fig, (ax_curve, ax_hist, ax_bar) = plt.subplots(
        1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.3, 1, 0.9]}
    )
    draw_curves(ax_curve, p_curve, curves)
    draw_mixture(ax_hist, p_mix, easy, pixel_share)
    draw_shares(ax_bar, pixel_share, shares)
    fig.suptitle(
        "Entropy minimisation hands the gradient to easy pixels; maximum squares grows only "
        "linearly in p (computed with jax.grad on msjax.losses)",
        fontsize=11,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()

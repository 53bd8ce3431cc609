"""The original's optimiser as optax transforms, with its training policy as config rules.

SGD, momentum 0.9 (no Nesterov), coupled weight decay 5e-4 (added to the gradient before the
momentum, as `torch.optim.SGD(weight_decay=...)`), a learning-rate schedule from
`SCHEDULES` (the original's poly, `lr = base * (1 - step / iter_max) ** 0.9`), and two
parameter groups: the backbone at `lr` and the heads at `10 * lr`.

Which parameters are in which group is *training policy*, so it lives in the config as an
ordered list of `(regex, group)` rules matched against '/'-joined parameter paths
(`layer3_5/conv2/kernel`); the first matching rule wins and every parameter must match one.
The group `frozen` gets no update at all (no weight decay, no momentum): in the original
those parameters receive no gradient (stem BN affine, unused ASPP branches, an aux head no
loss touches) and `torch.optim.SGD` skips them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import jax
import optax

from msjax.errors import ConfigError

FROZEN = "frozen"

# The original's optimiser (docs/original.md, "Optimisation"): the fields of config.optim
# except `rules`, which depend on the model and the losses (see `faithful_rules`).
ORIGINAL_OPTIM = dict(
    lr=2.5e-4,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="poly",
    poly_power=0.9,
    iter_max=29_760,
    groups={"backbone": 1.0, "head": 10.0},
)


def poly_schedule(base_lr: float, iter_max: int, power: float = 0.9) -> optax.Schedule:
    """lr(step) = base_lr * (1 - step / iter_max) ** power, 0 from iter_max on.

    Not `optax.polynomial_schedule`: jitted on XLA:CPU, its `1 - step / iter_max` becomes a
    multiplication by the reciprocal, slightly below 0 at iter_max, so it returns NaN from
    there on (docs/design.md); here the progress is capped at 1 first.
    """

    def schedule(step):
        progress = jax.numpy.minimum(step / iter_max, 1.0)
        return base_lr * (1.0 - progress) ** power

    return schedule


# Learning-rate schedules by name (config.optim.schedule): (base lr, config.optim) -> schedule.
SCHEDULES = {
    "poly": lambda lr, optim: poly_schedule(lr, optim["iter_max"], optim["poly_power"]),
}


def schedule(base_lr: float, optim: Mapping) -> optax.Schedule:
    """The learning-rate schedule config.optim names, starting from `base_lr`."""
    return SCHEDULES[optim["schedule"]](base_lr, optim)


def path_name(path) -> str:
    """'/'-joined name of a pytree key path, e.g. 'layer3_5/conv2/kernel'."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def label_params(params, rules: Sequence[tuple[str, str]]):
    """A pytree of group names, one per parameter, from the first matching `(regex, group)`.

    Raises:
      ConfigError: naming every parameter that no rule matches.
    """
    compiled = [(re.compile(pattern), group) for pattern, group in rules]
    unmatched = []

    def label(path, _):
        name = path_name(path)
        for pattern, group in compiled:
            if pattern.search(name):
                return group
        unmatched.append(name)
        return None

    labels = jax.tree_util.tree_map_with_path(label, params)
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (" ..." if len(unmatched) > 8 else "")
        raise ConfigError(
            f"config.optim.rules match no rule for {len(unmatched)} parameters: {shown}. "
            f"Rules (first match wins): {[tuple(r) for r in rules]}"
        )
    return labels


def make_optimizer(optim: Mapping, params) -> tuple[optax.GradientTransformation, dict]:
    """Builds the optimiser described by `config.optim` for `params`.

    Args:
      optim: fields lr, momentum, weight_decay, schedule (and its fields), and `groups`, a
        mapping {group: lr multiplier}, and `rules`, a list of (regex, group); `frozen` is
        implicit.
      params: the parameter pytree (or its shapes).

    Returns:
      (transformation, {group: number of parameters}) — the counts are worth logging.
    """
    groups = dict(optim["groups"])
    labels = label_params(params, optim["rules"])
    known = set(groups) | {FROZEN}
    used = set(jax.tree.leaves(labels))
    if used - known:
        raise ConfigError(
            f"config.optim.rules use groups {sorted(used - known)} that config.optim.groups "
            f"does not define; defined: {sorted(known)}"
        )
    transforms = {FROZEN: optax.set_to_zero()}
    for group, multiplier in groups.items():
        transforms[group] = optax.chain(
            optax.add_decayed_weights(optim["weight_decay"]),
            optax.sgd(schedule(optim["lr"] * multiplier, optim), momentum=optim["momentum"]),
        )
    counts = {g: 0 for g in known}
    for group, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(params), strict=True):
        counts[group] += int(leaf.size)
    return optax.multi_transform(transforms, labels), counts


def resolve_rules(rules, *, aspp_branches: int, aux_head_trained: bool):
    """config.optim.rules with 'faithful' replaced by `faithful_rules` for this model."""
    if rules == "faithful":
        return faithful_rules(aspp_branches=aspp_branches, aux_head_trained=aux_head_trained)
    return rules


def faithful_rules(*, aspp_branches: int, aux_head_trained: bool) -> list[tuple[str, str]]:
    """The original's parameter groups as rules.

    Args:
      aspp_branches: 2 (faithful: branches 3 and 4 get no gradient, so they are frozen) or 4.
      aux_head_trained: whether any loss touches the aux head `layer5` (multi-level runs).
    """
    rules = [(r"^bn1/", FROZEN)]  # the stem BN affine is frozen in the original
    if aspp_branches == 2:
        rules.append((r"^layer[56]/conv2d_list_[23]/", FROZEN))
    if not aux_head_trained:
        rules.append((r"^layer5/", FROZEN))
    rules += [(r"^layer[56]/", "head"), (r".*", "backbone")]
    return rules

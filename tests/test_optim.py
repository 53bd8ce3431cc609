"""The optimiser against torch.optim.SGD with the original's two parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from msjax import optim
from msjax.errors import ConfigError

OPTIM = dict(
    optim.ORIGINAL_OPTIM,
    iter_max=7,
    rules=optim.faithful_rules(aspp_branches=2, aux_head_trained=False),
)


def fake_params(rng):
    def arr(*shape):
        return jnp.asarray(rng.randn(*shape), jnp.float32)

    head = {f"conv2d_list_{i}": {"kernel": arr(3, 3, 4, 2), "bias": arr(2)} for i in range(4)}
    return {
        "conv1": {"kernel": arr(7, 7, 3, 4)},
        "bn1": {"scale": arr(4), "bias": arr(4)},
        "layer1_0": {
            "conv1": {"kernel": arr(1, 1, 4, 4)},
            "bn1": {"scale": arr(4), "bias": arr(4)},
        },
        "layer5": head,
        "layer6": jax.tree.map(lambda x: x + 1.0, head),
    }


def test_groups_follow_the_faithful_rules():
    params = fake_params(np.random.RandomState(0))
    labels = optim.label_params(params, OPTIM["rules"])
    assert labels["bn1"] == {"scale": "frozen", "bias": "frozen"}
    assert labels["conv1"]["kernel"] == "backbone"
    assert labels["layer1_0"]["bn1"]["scale"] == "backbone"
    assert set(jax.tree.leaves(labels["layer5"])) == {"frozen"}
    assert labels["layer6"]["conv2d_list_0"]["kernel"] == "head"
    assert labels["layer6"]["conv2d_list_1"]["bias"] == "head"
    assert labels["layer6"]["conv2d_list_2"]["kernel"] == "frozen"
    multi = optim.faithful_rules(aspp_branches=4, aux_head_trained=True)
    labels = optim.label_params(params, multi)
    assert labels["layer5"]["conv2d_list_3"]["kernel"] == "head"


def test_unmatched_parameter_is_an_error():
    params = fake_params(np.random.RandomState(0))
    with pytest.raises(ConfigError, match="match no rule for .* layer6/conv2d_list_0/kernel"):
        optim.label_params(params, [(r"^layer[1-5]", "head"), (r"^(conv1|bn1)", "backbone")])


def test_unknown_group_is_an_error():
    params = fake_params(np.random.RandomState(0))
    with pytest.raises(ConfigError, match="groups \\['heads'\\]"):
        optim.make_optimizer(
            {**OPTIM, "rules": [(r"^layer[56]", "heads"), (".*", "backbone")]}, params
        )


def test_matches_torch_sgd_with_two_groups_and_poly_lr():
    rng = np.random.RandomState(1)
    params = fake_params(rng)
    tx, counts = optim.make_optimizer(OPTIM, params)
    assert counts["frozen"] == 8 + 2 * (72 + 2) + 4 * (72 + 2)

    labels = optim.label_params(params, OPTIM["rules"])
    names = [optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    groups = dict(zip(names, jax.tree.leaves(labels), strict=True))
    tparams = {
        n: torch.tensor(np.asarray(v), requires_grad=True)
        for n, v in zip(names, jax.tree.leaves(params), strict=True)
    }
    sgd = torch.optim.SGD(
        [
            {"params": [tparams[n] for n in names if groups[n] == "backbone"], "lr": 0.0},
            {"params": [tparams[n] for n in names if groups[n] == "head"], "lr": 0.0},
        ],
        lr=0.0,
        momentum=0.9,
        weight_decay=5e-4,
    )
    state = tx.init(params)
    for step in range(6):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.randn(*x.shape), jnp.float32), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)

        # The original sets each group's lr before every step; frozen parameters get no grad.
        lr = 2.5e-4 * (1 - step / 7) ** 0.9
        sgd.param_groups[0]["lr"], sgd.param_groups[1]["lr"] = lr, 10 * lr
        for n, g in zip(names, jax.tree.leaves(grads), strict=True):
            tparams[n].grad = None if groups[n] == "frozen" else torch.tensor(np.asarray(g))
        sgd.step()
        for n, p in zip(names, jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(
                np.asarray(p), tparams[n].detach().numpy(), rtol=1e-6, atol=1e-7
            )


def test_poly_schedule_values():
    schedule = optim.schedule(2.5e-4, optim.ORIGINAL_OPTIM)
    assert float(schedule(0)) == pytest.approx(2.5e-4)
    assert float(schedule(14_880)) == pytest.approx(2.5e-4 * 0.5**0.9, rel=1e-6)
    assert float(schedule(29_760)) == 0.0 and float(schedule(40_000)) == 0.0


def test_poly_schedule_is_finite_and_the_formula_at_every_step():
    """Jitted as the optimiser runs it (an int32 count): never NaN, 0 from iter_max on (a
    jitted division by iter_max is a reciprocal multiplication on XLA:CPU), and the float64
    formula to float32 round-off everywhere else."""
    iter_max, base = 29_760, 2.5e-4
    steps = np.arange(iter_max + 5)
    config = dict(optim.ORIGINAL_OPTIM, iter_max=iter_max)
    ours = np.asarray(jax.jit(jax.vmap(optim.schedule(base, config)))(jnp.asarray(steps)))
    assert np.isfinite(ours).all() and (ours[iter_max:] == 0).all()
    exact = base * (1 - np.minimum(steps / iter_max, 1.0)) ** 0.9
    # float32's 1 - step / iter_max loses relative precision as it nears 0.
    head = 9 * iter_max // 10
    np.testing.assert_allclose(ours[:head], exact[:head], rtol=2e-6)
    np.testing.assert_allclose(ours, exact, rtol=0, atol=2e-7 * base)

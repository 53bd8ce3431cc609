"""The method table: every method's loss, parameters, lambda and source model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msjax import configlib, losses, methods
from msjax.errors import ConfigError

LOSS = dict(configlib.ORIGINAL_LOSS, iw_ratio=0.3, threshold=0.9)


def logits():
    return jnp.asarray(np.random.RandomState(0).randn(1, 9, 11, 19) * 4, jnp.float32)


def test_each_adapting_method_computes_its_loss_with_config_parameters():
    x = logits()
    expected = {
        "control": losses.max_square(x),
        "minent": losses.entropy(x),
        "hard": losses.hard_pseudo_label(x, threshold=0.9),
        "maxsquare": losses.max_square(x),
        "iw": losses.iw_max_square(x, ratio=0.3),
        "iw_multi": losses.iw_max_square(x, ratio=0.3),
    }
    adapting = {n for n, m in methods.METHODS.items() if m.adapting}
    assert adapting == set(expected)
    for name, value in expected.items():
        assert methods.METHODS[name].target_term(x, LOSS) == value, name
    # The parameters come from config.loss: another ratio gives another value.
    other = methods.METHODS["iw"].target_term(x, dict(LOSS, iw_ratio=0.1))
    assert abs(float(other) - float(expected["iw"])) > 1e-4


def test_target_term_inside_jit():
    step = jax.jit(jax.value_and_grad(lambda x: methods.METHODS["iw"].target_term(x, LOSS)))
    value, grad = step(logits())
    np.testing.assert_allclose(value, losses.iw_max_square(logits(), ratio=0.3), rtol=1e-6)
    assert grad.shape == logits().shape


def test_lambdas_and_source_models_are_the_papers():
    assert methods.METHODS["iw_multi"].lambda_target(0.1) == 0.09
    assert methods.METHODS["iw_multi"].lambda_target(1.0) == 0.9
    assert methods.METHODS["control"].lambda_target(0.1) == 0.0
    assert methods.METHODS["maxsquare"].lambda_target(0.1) == 0.1
    assert methods.METHODS["iw_multi"].start_from == ("source_multi", "best")
    assert methods.METHODS["iw"].start_from == ("source", "final")
    assert methods.source_only() == ("source", "source_multi")
    for name in methods.source_only():
        assert methods.METHODS[name].start_from is None


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="config.method='maxsqaure'.*maxsquare"):
        methods.get("maxsqaure")

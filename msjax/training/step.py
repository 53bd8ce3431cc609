"""The adaptation step: two forward passes, one gradient of the summed loss, one update.

    total = CE(main_s, y_s) [+ lambda_seg * CE(aux_s, y_s)]             source, labelled
          + lambda_target * L_target(main_t)                             target, unlabelled
          [+ lambda_seg * lambda_target * CE(aux_t, multi-level labels)]

as the original computes it (docs/protocol.md): the source batch goes through the model
first and the target batch second, each normalised by its own BN statistics in training
mode, with the running statistics updated by the source pass and then by the target pass.
The method (`msjax.methods`) names L_target; a source-only method skips the target pass.
Its `multi_level` is the original's `--multi True`: the aux CE on the source in every run
(source-only included: that is how the source model of IW+Multi gets a trained aux head),
and the self-produced guidance on the target when adapting.

Adaptation steps also report, for the paper's gradient argument, the share of pixels whose
target prediction is easy (p > 0.9) and the share of the gradient w.r.t. the target logits
that those pixels would receive under entropy minimisation and under maximum squares, at the
current weights whatever loss trains (`losses.easy_gradient_share`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from msjax import losses, sharding, xla
from msjax.methods import Method
from msjax.models import DeepLabV2


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: the one pytree that is checkpointed."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(variables: Mapping, tx: optax.GradientTransformation) -> TrainState:
    """A state at step 0 from model variables {'params', 'batch_stats'}."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )


def compute_loss(
    params, batch_stats, source, target, *, model: DeepLabV2, method: Method, loss: Mapping
):
    """The summed loss, the BN statistics after both passes, and the loss terms.

    Args:
      params, batch_stats: model variables.
      source: {'image': [B,H,W,3], 'label': [B,H,W]}.
      target: {'image': [B,H',W',3]}, or None for a source-only method.
      model: the DeepLabV2 to apply.
      method: what the target pass computes (msjax.methods).
      loss: config.loss fields (lambda_target, iw_ratio, threshold, multi_threshold,
        lambda_seg, ignore_index).

    Returns:
      (total, (batch_stats, {name: scalar})).
    """
    ce = functools.partial(losses.cross_entropy, ignore_index=loss["ignore_index"])
    (main_s, aux_s), updated = model.apply(
        {"params": params, "batch_stats": batch_stats},
        source["image"],
        train=True,
        mutable=["batch_stats"],
    )
    terms = {"loss_source": ce(main_s, source["label"])}
    total = terms["loss_source"]
    if method.multi_level:
        terms["loss_source_aux"] = ce(aux_s, source["label"])
        total = total + loss["lambda_seg"] * terms["loss_source_aux"]
    batch_stats = updated["batch_stats"]

    if method.adapting:
        (main_t, aux_t), updated = model.apply(
            {"params": params, "batch_stats": batch_stats},
            target["image"],
            train=True,
            mutable=["batch_stats"],
        )
        batch_stats = updated["batch_stats"]
        terms["loss_target"] = method.target_term(main_t, loss)
        total = total + loss["lambda_target"] * terms["loss_target"]
        if method.multi_level:
            terms["loss_multi"] = losses.multi_level_guidance(
                main_t, aux_t, threshold=loss["multi_threshold"]
            )
            total = total + loss["lambda_seg"] * loss["lambda_target"] * terms["loss_multi"]
    terms["loss"] = total
    if method.adapting:
        terms.update(easy_gradient_terms(main_t))
    return total, (batch_stats, terms)


def easy_gradient_terms(logits) -> dict:
    """Metrics of the paper's argument on target logits (no gradient flows through them).

    Returns:
      {'easy_pixels': share of easy pixels, 'easy_grad_minent' and 'easy_grad_maxsquare':
      the share of each loss's logit gradient that the easy pixels receive}.
    """
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    easy = losses.easy_pixels(logits)  # once, for both losses
    minent, share, _ = losses.easy_gradient_share(losses.entropy, logits, easy=easy)
    maxsquare, _, _ = losses.easy_gradient_share(losses.max_square, logits, easy=easy)
    return {"easy_pixels": share, "easy_grad_minent": minent, "easy_grad_maxsquare": maxsquare}


def make_train_step(
    model: DeepLabV2, tx: optax.GradientTransformation, method: Method, loss: Mapping
):
    """`train_step(state, source, target) -> (state, metrics)`, not yet jitted.

    Everything static (model, optimiser, method, config.loss) is bound here. The faithful
    model draws no random numbers; a variant that does would derive its key from
    `state.step` (`jax.random.fold_in`), so that a resumed run needs no RNG bookkeeping.
    """
    loss = dict(loss)

    def train_step(state: TrainState, source, target):
        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (_, (batch_stats, metrics)), grads = grad_fn(
            state.params, state.batch_stats, source, target, model=model, method=method,
            loss=loss,
        )  # fmt: skip
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        new_state = TrainState(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
        )
        return new_state, metrics

    return train_step


def jit_train_step(train_step, mesh, *, adapting: bool):
    """`train_step` jitted over `mesh`: state replicated and donated, batches split.

    Args:
      train_step: from `make_train_step`.
      mesh: the device mesh (`msjax.sharding.make_mesh`); the step is compiled for its
        devices' platform (the model's `platform` should be the same).
      adapting: whether a target batch is passed (None in source-only training).
    """
    repl, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    return jax.jit(
        train_step,
        in_shardings=(repl, batch, batch if adapting else None),
        out_shardings=(repl, repl),
        donate_argnums=(0,),
        compiler_options=xla.compiler_options(sharding.platform(mesh)),
    )

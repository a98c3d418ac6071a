"""AuxNet's multi-way backpropagation: one forward pass, then one update per output, in series.

Joint backpropagation (the paper, `trainer.ExitTrainer`) takes one optimizer step on the
gradient of sum_k w_k CE_k. Multi-way (AuxNet, Guo et al., section 3.2.3) backpropagates
each output's weighted loss separately, in series, with an optimizer update after each.
Choices (FIDELITY.md L4): the gradients all come from the one forward pass (at the weights
before the step); outputs are taken from the final exit down to the shallowest; one
optimizer serves every update, so its state (momentum, iteration count) advances K times
per batch, for every trainable variable (a zero gradient where the output does not reach);
outputs of weight 0 are skipped. With plain SGD this is one joint step; with momentum it is
not.

Per-output gradients have no backend-neutral Keras API, so the step is written once per
backend (TensorFlow and JAX), in this module only.
"""

import keras
from keras import ops

from elastic_keras.errors import ElasticKerasError
from elastic_keras.backend.keras_internals import track_loss
from elastic_keras.training.objective import ExitTrainer, exit_terms


class MultiWayTrainer(ExitTrainer):
    """Common part: which outputs update, in which order, and the metric updates."""

    def __init__(self, net, loss_weights, **kwargs):
        super().__init__(net, loss_weights, **kwargs)
        # The final exit first, then down to the shallowest; weight-0 outputs skipped.
        self.order = [k for k in reversed(range(len(self.loss_weights)))
                      if self.loss_weights[k] > 0]

    def _record(self, total, ce, acc, clipped, batch):
        track_loss(self, total, batch)
        self.exit_metrics.update_state(ops.concatenate([ce, acc, clipped]), batch)


class MultiWayTensorFlow(MultiWayTrainer):
    def train_step(self, data):
        import tensorflow as tf

        x, y = data[0], data[1]
        weights = tf.constant(self.loss_weights, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            ce, acc, clipped = exit_terms(self(x, training=True), y)
            weighted = weights * ce
            terms = [weighted[k] for k in self.order]  # sliced under the tape
        variables = self.trainable_variables
        grads = [tape.gradient(term, variables) for term in terms]
        del tape
        for g in grads:
            self.optimizer.apply([tf.zeros_like(v) if gv is None else gv
                                  for gv, v in zip(g, variables)], variables)
        self._record(tf.reduce_sum(weighted), ce, acc, clipped, tf.shape(y)[0])
        return self.get_metrics_result()


class MultiWayJax(MultiWayTrainer):
    def train_step(self, state, data):
        import jax
        import jax.numpy as jnp

        trainable, non_trainable, opt_vars, metric_vars = state
        x, y = data[0], data[1]
        weights = jnp.asarray(self.loss_weights, jnp.float32)

        def weighted_losses(tv):
            probs, nt = self.stateless_call(tv, non_trainable, x, training=True)
            ce, acc, clipped = exit_terms(probs, y)
            return weights * ce, (nt, ce, acc, clipped)

        weighted, backprop, (non_trainable, ce, acc, clipped) = jax.vjp(
            weighted_losses, trainable, has_aux=True)
        grads = [backprop(jnp.zeros_like(weighted).at[k].set(1.0))[0] for k in self.order]
        for g in grads:  # in series, each from the same forward pass
            trainable, opt_vars = self.optimizer.stateless_apply(opt_vars, g, trainable)
        mapping = list(zip(self.metrics_variables, metric_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._record(jnp.sum(weighted), ce, acc, clipped, y.shape[0])
            logs = self.get_metrics_result()
        metric_vars = [scope.get_current_value(v) if scope.get_current_value(v) is not None
                       else mv for v, mv in zip(self.metrics_variables, metric_vars)]
        return logs, (trainable, non_trainable, opt_vars, metric_vars)


def multi_way_trainer(net, loss_weights):
    """An ExitTrainer whose training step is AuxNet's multi-way backpropagation."""
    backend = keras.backend.backend()
    cls = {"tensorflow": MultiWayTensorFlow, "jax": MultiWayJax}.get(backend)
    if cls is None:
        raise ElasticKerasError(f"train.backprop = 'multi_way' runs under the tensorflow and "
                                f"jax backends, not {backend}; use 'joint' there")
    return cls(net, loss_weights)

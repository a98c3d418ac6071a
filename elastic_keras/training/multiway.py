"""AuxNet's multi-way backpropagation: one forward pass, then one update per output, in series.

Joint backpropagation (the paper, `objective.ExitTrainer`) takes one optimizer step on the
gradient of sum_k w_k CE_k. Multi-way (AuxNet, Guo et al., section 3.2.3: "keeping the
features and losses fixed, we conduct the gradient backpropagation for each output
separately in a sequential way") backpropagates each output's weighted loss separately,
in series, with an optimizer update after each (FIDELITY.md L4):

- `multi_way` (as AuxNet writes it): the features and losses of the ONE forward pass are
  kept; each output's backward pass runs through every layer at the layer's stored input
  and its weights as already updated by the outputs before it (a Torch module's backward).
- `multi_way_prestep` (our earlier reading): every output's gradient is taken at the
  weights before the step, then the updates are applied in turn; with plain SGD this is
  exactly one joint step.

Shared choices: outputs are taken from the final exit down to the shallowest; one
optimizer serves every update, so its state (momentum, iteration count) advances K times
per batch, for every trainable variable (a zero gradient where the output does not reach);
outputs of weight 0 are skipped; the logged losses are those of the forward pass.
Per-output gradients have no backend-neutral Keras API, so the step is written once per
backend (TensorFlow and JAX), in this module only.
"""

import keras
from keras import ops

from elastic_keras.backend.keras_internals import run_graph, track_loss
from elastic_keras.errors import ElasticKerasError
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

    def _term(self, probs, y, k):
        """Output k's weighted loss."""
        return self.loss_weights[k] * exit_terms(probs, y)[0][k]


class PrestepTensorFlow(MultiWayTrainer):
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


class AsWrittenTensorFlow(MultiWayTrainer):
    def train_step(self, data):
        import tensorflow as tf

        x, y = data[0], data[1]
        states = self.non_trainable_variables  # BatchNorm statistics, dropout seeds
        before = [tf.identity(v) for v in states]
        probs, stored = run_graph(self.net, x, True)  # the one forward pass
        ce, acc, clipped = exit_terms(probs, y)
        after = [tf.identity(v) for v in states]
        variables = self.trainable_variables
        for k in self.order:
            for v, b in zip(states, before):  # the same dropout masks in every pass
                v.assign(b)
            with tf.GradientTape() as tape:
                term = self._term(run_graph(self.net, x, True, stored)[0], y, k)
            g = tape.gradient(term, variables)
            self.optimizer.apply([tf.zeros_like(v) if gv is None else gv
                                  for gv, v in zip(g, variables)], variables)
        for v, a in zip(states, after):  # statistics updated once, by the forward pass
            v.assign(a)
        weighted = tf.constant(self.loss_weights, tf.float32) * ce
        self._record(tf.reduce_sum(weighted), ce, acc, clipped, tf.shape(y)[0])
        return self.get_metrics_result()


class _Jax(MultiWayTrainer):
    def _finish(self, state, weighted, ce, acc, clipped, batch):
        trainable, non_trainable, opt_vars, metric_vars = state
        mapping = list(zip(self.metrics_variables, metric_vars))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            self._record(ops.sum(weighted), ce, acc, clipped, batch)
            logs = self.get_metrics_result()
        metric_vars = [scope.get_current_value(v) if scope.get_current_value(v) is not None
                       else mv for v, mv in zip(self.metrics_variables, metric_vars)]
        return logs, (trainable, non_trainable, opt_vars, metric_vars)


class PrestepJax(_Jax):
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
        return self._finish((trainable, non_trainable, opt_vars, metric_vars), weighted, ce,
                            acc, clipped, y.shape[0])


class AsWrittenJax(_Jax):
    def _run(self, tv, ntv, x, stored=None):
        """The net's outputs, its layers' outputs and its new state, run statelessly."""
        mapping = list(zip(self.trainable_variables, tv)) + list(
            zip(self.non_trainable_variables, ntv))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            probs, values = run_graph(self.net, x, True, stored)
            new = [scope.get_current_value(v) for v in self.non_trainable_variables]
        return probs, values, [n if n is not None else o for n, o in zip(new, ntv)]

    def train_step(self, state, data):
        import jax
        import jax.numpy as jnp

        trainable, non_trainable, opt_vars, metric_vars = state
        x, y = data[0], data[1]
        probs, stored, after = self._run(trainable, non_trainable, x)  # one forward pass
        ce, acc, clipped = exit_terms(probs, y)
        for k in self.order:  # stored features, current weights, the same dropout masks
            g = jax.grad(lambda tv, k=k: self._term(
                self._run(tv, non_trainable, x, stored)[0], y, k))(trainable)
            trainable, opt_vars = self.optimizer.stateless_apply(opt_vars, g, trainable)
        weighted = jnp.asarray(self.loss_weights, jnp.float32) * ce
        return self._finish((trainable, after, opt_vars, metric_vars), weighted, ce, acc,
                            clipped, y.shape[0])


def multi_way_trainer(net, loss_weights, variant="multi_way"):
    """An ExitTrainer whose training step is AuxNet's multi-way backpropagation: `variant`
    "multi_way" (as AuxNet writes it) or "multi_way_prestep" (gradients at the pre-step
    weights)."""
    backend = keras.backend.backend()
    classes = {("tensorflow", "multi_way"): AsWrittenTensorFlow,
               ("tensorflow", "multi_way_prestep"): PrestepTensorFlow,
               ("jax", "multi_way"): AsWrittenJax, ("jax", "multi_way_prestep"): PrestepJax}
    if (backend, variant) not in classes:
        raise ElasticKerasError(f"train.backprop = {variant!r} runs under the tensorflow and "
                                f"jax backends, not {backend}; use 'joint' there")
    return classes[(backend, variant)](net, loss_weights)

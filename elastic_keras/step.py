"""Training step on the sum of exit losses, with all exits' metrics in one vectorised op."""

import keras
import tensorflow as tf

EPSILON = 1e-7  # Keras' categorical_crossentropy clips probabilities to [eps, 1 - eps]


class ExitMetrics(keras.metrics.Metric):
    """Epoch means of the total loss and of every exit's loss and accuracy.

    One metric object for all exits, one small vector update per step (FIDELITY.md T10).
    Measured with Keras 3.15 on a 2-core CPU (scripts/bench_exit_overhead.py), the naive
    way (one loss and one accuracy metric object per output) cost about as much here;
    either way the heads' backward pass, not the metrics, is the elastic overhead.
    """

    def __init__(self, output_names, name="exit_metrics", **kwargs):
        super().__init__(name=name, **kwargs)
        self.output_names = list(output_names)
        n = 1 + 2 * len(self.output_names)
        self.sums = self.add_variable(shape=(n,), initializer="zeros", name="sums")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, batch_size):
        batch_size = tf.cast(batch_size, "float32")
        self.sums.assign_add(values * batch_size)
        self.count.assign_add(batch_size)

    def result(self):
        means = self.sums / tf.maximum(self.count, 1.0)
        k = len(self.output_names)
        out = {"loss": means[0]}
        for i, o in enumerate(self.output_names):
            out[f"{o}_loss"] = means[1 + i]
            out[f"{o}_accuracy"] = means[1 + k + i]
        return out

    def reset_state(self):
        self.sums.assign(tf.zeros_like(self.sums))
        self.count.assign(0.0)


class ExitTrainer(keras.Model):
    """Wraps a functional elastic (or plain) model; trains on sum_i w_i * CE_i (eq. 2).

    Labels are integer class indices. CE_i is Keras' categorical cross-entropy of the
    softmax output of exit i, without the 1/C factor of the paper's eq. (2), as the
    authors trained (FIDELITY.md L1, L2).
    """

    def __init__(self, net, loss_weights, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.loss_weights = tf.constant(loss_weights, dtype="float32")
        self.exit_metrics = ExitMetrics(net.output_names)

    @property
    def metrics(self):
        return [self.exit_metrics]

    def call(self, x, training=False):
        return self.net(x, training=training)

    def _exit_losses(self, probs, y):
        # probs: (B, C) per exit (a plain model has one) -> (K, B, C); per-exit CE and
        # accuracy, (K,) each.
        p = tf.stack(probs if isinstance(probs, (list, tuple)) else [probs], axis=0)
        y = tf.cast(y, "int32")
        onehot = tf.one_hot(y, tf.shape(p)[-1], dtype=p.dtype)
        p_true = tf.reduce_sum(p * onehot[None], axis=-1)
        ce = -tf.math.log(tf.clip_by_value(p_true, EPSILON, 1.0 - EPSILON))
        hit = tf.cast(tf.equal(tf.argmax(p, axis=-1, output_type="int32"), y[None]), p.dtype)
        per_exit = tf.reduce_mean(ce, axis=1)
        return tf.reduce_sum(self.loss_weights * per_exit), per_exit, tf.reduce_mean(hit, axis=1)

    def _record(self, total, per_exit, acc, y):
        self.exit_metrics.update_state(
            tf.concat([total[None], per_exit, acc], axis=0), tf.shape(y)[0])
        return self.exit_metrics.result()

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            total, per_exit, acc = self._exit_losses(self.net(x, training=True), y)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(total, variables), variables)
        return self._record(total, per_exit, acc, y)

    def test_step(self, data):
        x, y = data
        return self._record(*self._exit_losses(self.net(x, training=False), y), y)


class CompactProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar showing the total loss and the final exit's metrics only.

    Every exit's numbers still reach History and history.csv; a line with 17 exits'
    losses and accuracies would be unreadable.
    """

    SHOWN = ("loss", "final_loss", "final_accuracy")

    def _update_progbar(self, batch, logs=None):
        super()._update_progbar(batch, self._compact(logs))

    def _finalize_progbar(self, logs):
        super()._finalize_progbar(self._compact(logs))

    def _compact(self, logs):
        if not logs:
            return logs
        return {k: v for k, v in logs.items() if k.removeprefix("val_") in self.SHOWN}

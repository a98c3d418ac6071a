"""In-graph input preprocessing: native uint8 images in, resized and scaled floats out."""

import keras
from keras import ops

from elastic_keras.data.datasets import PREPROCESS_MODES as MODES  # (FIDELITY.md A3)
from elastic_keras.errors import ElasticKerasError

# paper: bilinear resize, scale to [0, 1] (PAPER.md section 5).
# authors: bilinear resize on the uint8 grid (scipy.misc.imresize rounds back to uint8),
#          then inception_v3.preprocess_input, i.e. [-1, 1], for every backbone
#          (FIDELITY.md P2, A5).


@keras.saving.register_keras_serializable(package="elastic_keras")
class Preprocess(keras.layers.Layer):
    """Resize a batch to `size` x `size` (bilinear) and scale it, inside the model graph.

    Images stay uint8 at native size in host memory; this layer runs per batch on the
    device, so the 224-px dataset is never materialised (FIDELITY.md P1, P2, D3).
    """

    def __init__(self, size, mode="paper", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ElasticKerasError(f"unknown preprocessing {mode!r}; valid: {', '.join(MODES)}")
        self.size = int(size)
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, "float32")
        if x.shape[1] != self.size or x.shape[2] != self.size:
            x = ops.image.resize(x, (self.size, self.size), interpolation="bilinear",
                                 antialias=False)
            if self.mode == "authors":
                x = ops.clip(ops.round(x), 0.0, 255.0)
        if self.mode == "authors":
            return x / 127.5 - 1.0
        return x / 255.0

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "mode": self.mode}

"""Streamed batches: native-size uint8 images sliced per batch on the host (a Keras PyDataset;
FIDELITY.md D3, B1)."""

import keras
import numpy as np

from elastic_keras.checks import check_int
from elastic_keras.errors import ElasticKerasError


class Batches(keras.utils.PyDataset):
    """(uint8 images, int32 labels) batches at native size, as a Keras PyDataset.

    Arrays are sliced per batch on the host, never embedded in the graph and never
    resized here (the model resizes in-graph; PAPER.md section 5). With `shuffle`, the
    order is a numpy permutation seeded by (seed, epoch), so a resumed run sees the same
    order. The last partial batch is kept.
    """

    def __init__(self, x, y, batch_size, shuffle=False, seed=0, epoch=0):
        super().__init__()
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.dtype != np.uint8:
            raise ElasticKerasError(
                f"batches: x must be a uint8 array (N, H, W, C); received "
                f"{type(x).__name__} {getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}")
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise ElasticKerasError(
                f"batches: y must have shape ({len(x)},) to match x; received {y.shape}")
        self.batch_size = check_int("batch_size", batch_size, 1)
        seed = check_int("seed", seed, 0)
        epoch = check_int("epoch", epoch, 0)
        self.x, self.y = x, y.astype(np.int32, copy=False)
        # Seeded by (seed, epoch): a resumed run sees the same order (FIDELITY.md D4).
        self.order = np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle \
            else None

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        if self.order is None:
            return self.x[part], self.y[part]
        rows = self.order[part]
        return self.x[rows], self.y[rows]


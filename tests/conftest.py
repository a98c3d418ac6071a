import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def tiny_cnn(convs=(4, 6, 8)):
    """A small named CNN on 8x8x3 inputs: conv c1, pool p1, conv c2, [pool p2, conv c3]."""
    import keras

    L = keras.layers
    inp = keras.Input((8, 8, 3))
    x = inp
    for i, filters in enumerate(convs, 1):
        if i > 1:
            x = L.MaxPooling2D(name=f"p{i - 1}")(x)
        x = L.Conv2D(filters, 3, padding="same", activation="relu", name=f"c{i}")(x)
    return keras.Model(inp, x, name="tiny")

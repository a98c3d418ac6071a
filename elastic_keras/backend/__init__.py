"""Backend and device: what runs where, and the package's only use of Keras internals."""

"""Data: CIFAR files, datasets, splits, batches and in-graph preprocessing."""

"""Training: the summed-loss objective, loss weights, the one loop with phases as data."""

"""Runs: configs, the run directory, training and evaluating one run."""

"""Elastic inference: truncated predictors, the exit cascade, thresholds, calibration, export."""

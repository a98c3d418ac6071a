"""Sweeps: every run of a table, launched locally or on Ray."""

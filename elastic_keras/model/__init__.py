"""Models: where exits go (the registry), the one factory, exit records and their costs."""

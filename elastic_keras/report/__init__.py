"""Reports: the papers' numbers, Tables I and II, Bai et al.'s table, plots."""

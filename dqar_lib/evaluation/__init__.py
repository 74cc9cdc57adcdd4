"""Measuring methods side by side: the method interface, the benchmark, the peers, low-bit baselines, metrics."""

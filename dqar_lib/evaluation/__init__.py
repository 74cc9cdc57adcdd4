"""Measuring methods side by side: the method interface, the timing rules and their runners, the analysis of
their results, the peers, low-bit baselines, metrics."""

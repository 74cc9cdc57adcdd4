"""Offline fitting from sampling runs: traces, the cache's CSB calibration, gate thresholds, the policy."""

"""The runtime core: everything `apply_dqar` needs inside a forward (config, decision rule, gates, schedule,
statistics, controller, hooks, cache and its storage formats, the policy model). It imports nothing from the
rest of dqar_lib (tests/test_layout.py checks)."""

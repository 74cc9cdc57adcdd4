import math
import re

import pytest

from dqar_lib import PRESETS, DQARConfig


def test_presets_exist_and_validate():
    for name in ("off", "always", "static", "entropy", "snr", "gates", "forecast", "dqar"):
        assert name in PRESETS
        DQARConfig.preset(name)
    assert DQARConfig.preset("off").enabled is False
    assert DQARConfig.preset("gates") == DQARConfig()  # the field defaults are the gate preset


def test_the_dqar_preset_is_a_forecast_of_the_whole_stack():
    """"dqar", what apply_dqar(model) runs, is the profile family's point notebooks/09 measures best (it asserts
    that the two agree); here: it forecasts, reuses the stack, and runs no gate."""
    d = DQARConfig.preset("dqar")
    assert d.forecast_order == 2 and d.granularity == "stack" and d.cache_mode == "delta" and d.streak_profile
    assert not (d.use_entropy_gate or d.use_snr_gate or d.use_schedule or d.use_policy)
    assert d.replace(forecast_order=1, warmup=0.2, end_computes=2, streak_profile=None) == \
        DQARConfig.preset("forecast")


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"'fastest'.*off.*dqar"):
        DQARConfig.preset("fastest")


def test_preset_overrides():
    assert DQARConfig.preset("gates", tau=0.5).tau == 0.5


@pytest.mark.parametrize("field,value", [
    ("tau", -0.1), ("tau", 1.5), ("warmup", 2.0), ("granularity", "block?"), ("cache_mode", "int4"),
    ("max_reuse_streak", -1), ("snr_lo", -1.0), ("cache_budget_bytes", -5), ("entropy_rows", 0),
    ("cfg_layout", "middle"), ("tau_slope", math.inf), ("snr_hi", math.nan), ("snr_lo", math.nan), ("snr_hi", -1.0),
])
def test_bad_values_name_field_and_value(field, value):
    with pytest.raises(ValueError, match=re.escape(f"DQARConfig.{field}={value!r} is invalid")):
        DQARConfig(**{field: value})


def test_empty_snr_range():
    with pytest.raises(ValueError, match="snr_lo=5.0 > snr_hi=1.0"):
        DQARConfig(snr_lo=5.0, snr_hi=1.0)


def test_cfg_share_needs_attn_granularity():
    with pytest.raises(ValueError, match="cfg_share"):
        DQARConfig(cfg_share=True, granularity="kv")


def test_policy_needs_a_file():
    with pytest.raises(ValueError, match="policy_path"):
        DQARConfig(use_policy=True)


def test_presets_are_pure_and_the_default_cache_mode_is_pinned(monkeypatch):
    """A preset reads no file (a notebook run cannot change the library's default), and "gates" caches in
    int8_channel, the mode notebooks/04_quantization measures as recommended (it asserts the two agree)."""
    import builtins

    def no_open(*a, **k):
        raise AssertionError(f"a preset opened a file: {a[:1]}")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr("pathlib.Path.is_file", lambda self: (_ for _ in ()).throw(AssertionError(str(self))))
    for name in PRESETS:
        assert DQARConfig.preset(name) == DQARConfig.preset(name)
    assert DQARConfig.preset("gates").cache_mode == "int8_channel"
    assert DQARConfig.preset("gates") == DQARConfig()
    assert DQARConfig.preset("dqar_csb").cache_mode == "csb"

import math
import re

import pytest

from dqar_lib import PRESETS, DQARConfig


def test_presets_exist_and_validate():
    for name in ("off", "always", "static", "entropy", "snr", "dqar"):
        assert name in PRESETS
        DQARConfig.preset(name)
    assert DQARConfig.preset("off").enabled is False
    assert DQARConfig.preset("dqar") == DQARConfig()


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"'fastest'.*off.*dqar"):
        DQARConfig.preset("fastest")


def test_preset_overrides():
    assert DQARConfig.preset("dqar", tau=0.5).tau == 0.5


@pytest.mark.parametrize("field,value", [
    ("tau", -0.1), ("tau", 1.5), ("warmup", 2.0), ("granularity", "block?"), ("cache_mode", "int4"),
    ("max_reuse_streak", -1), ("snr_lo", -1.0), ("cache_budget_bytes", -5), ("entropy_rows", 0),
    ("cfg_layout", "middle"), ("tau_slope", math.inf),
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


def test_dqar_preset_takes_the_measured_cache_mode(tmp_path, monkeypatch):
    import torch

    from dqar_lib import config as config_module
    from dqar_lib.calibration import Calibration, save_calibration

    calib = {(0, "out"): Calibration(b=torch.ones(4), scale=torch.tensor(0.1))}
    path = save_calibration(tmp_path / "c.pt", calib, meta={"recommended_mode": "csb"})
    monkeypatch.setattr(config_module, "DEFAULT_CALIBRATION", path)
    cfg = DQARConfig.preset("dqar")
    assert cfg.cache_mode == "csb" and cfg.cache_calibration == str(path)
    save_calibration(path, calib, meta={"recommended_mode": "int8_tensor"})
    assert DQARConfig.preset("dqar").cache_mode == "int8_tensor"
    monkeypatch.setattr(config_module, "DEFAULT_CALIBRATION", tmp_path / "absent.pt")
    assert DQARConfig.preset("dqar") == DQARConfig()

import pytest
import torch

from dqar_lib import DQARConfig, apply_dqar, remove_dqar
from dqar_lib.fitting.cache_fit import (
    collect_cache_tensors,
    csb_factors,
    error_table,
    fit_csb_calibration,
    reconstruction_error,
    salience,
    ssc_weights,
)
from dqar_lib.method.quant import dequantize, quantize
from dqar_lib.method.storage import (
    FORMAT,
    CSBCalibration,
    dequantize_calibrated,
    load_csb_calibration,
    quantize_calibrated,
    save_csb_calibration,
)


def outlier_tensors(T=4, C=32, outliers=(3, 17), factor=30.0, seed=0):
    """{(0, "out"): [(t, X (2, 16, C))]} with a few channels `factor` times larger than the rest."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(T):
        x = torch.randn(2, 16, C, generator=g)
        x[..., list(outliers)] *= factor
        items.append((float(900 - 200 * i), x))
    return {(0, "out"): items}


def mean_rel(result):
    rows = [r for v in result.values() for r in v]
    return sum(r["rel_l2"] for r in rows) / len(rows)


def test_csb_reduces_per_tensor_error_on_outlier_channels():
    tensors = outlier_tensors()
    plain = mean_rel(reconstruction_error(tensors, "int8_tensor"))
    for mode in ("csb", "csb_ssc"):
        assert mean_rel(reconstruction_error(tensors, mode, alpha=0.5)) < 0.5 * plain
    # more balancing, less error, down towards per-channel INT8 (which adapts every tensor: the floor here)
    errs = [mean_rel(reconstruction_error(tensors, "csb", alpha=a)) for a in (0.0, 0.25, 0.5, 1.0)]
    assert errs[0] > plain  # alpha = 0 with the static scale: the largest timestep's scale serves all
    assert all(a > b for a, b in zip(errs, errs[1:]))
    dyn = fit_csb_calibration(tensors, alpha=0.0)
    assert mean_rel(reconstruction_error(tensors, dyn, dynamic=True)) == pytest.approx(plain, rel=1e-6)
    assert mean_rel(reconstruction_error(tensors, "int8_channel")) < errs[-1] < 2 * mean_rel(
        reconstruction_error(tensors, "int8_channel"))
    assert mean_rel(reconstruction_error(tensors, "fp16")) < 1e-3


def test_alpha_zero_is_plain_per_tensor_int8():
    x = outlier_tensors(T=1)[(0, "out")][0][1]
    calib = fit_csb_calibration({(0, "out"): [(500.0, x)]}, alpha=0.0)[(0, "out")]
    assert torch.equal(calib.b, torch.ones(32))
    q = quantize_calibrated(x, calib)
    assert torch.equal(dequantize_calibrated(q, calib), dequantize(quantize(x, "int8_tensor")))


def test_static_scale_never_clips_the_calibration_set():
    tensors = outlier_tensors()
    calib = fit_csb_calibration(tensors)[(0, "out")]
    for _, x in tensors[(0, "out")]:
        assert quantize_calibrated(x, calib).data.abs().max() <= 127
        assert torch.allclose(calib.scale, max(salience(x / calib.b).max() for _, x in tensors[(0, "out")]) / 127)


def test_ssc_weights_are_normalised_and_follow_the_ranking():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(32, generator=g) * 10  # (C,) a shared channel ranking
    s_t = torch.stack([base + 0.3 * torch.rand(32, generator=g) for _ in range(5)])  # (T, C)
    eta = ssc_weights(s_t)
    assert eta.shape == (5,) and torch.all((eta >= 0) & (eta <= 1))
    assert torch.isclose(eta.sum(), torch.tensor(1.0))
    permuted = s_t.clone()
    permuted[2] = s_t[2][torch.randperm(32, generator=g)]  # timestep 2 loses the consensus ranking
    eta_p = ssc_weights(permuted)
    assert eta_p[2] < eta[2] - 0.05 and eta_p[2] == eta_p.min()
    # PTQ4DiT's sign: against a weight salience, the complementary (low-rho) timestep gets the most weight
    assert ssc_weights(permuted, base, sign=-1.0).argmax() == 2


def test_csb_factors_and_argument_errors():
    b = csb_factors(torch.tensor([1.0, 4.0, 16.0]), alpha=0.5)
    assert torch.allclose(b, torch.tensor([0.5, 1.0, 2.0]))  # sqrt(s / geomean), geomean = 4
    with pytest.raises(ValueError, match="alpha"):
        csb_factors(torch.ones(3), alpha=1.5)
    with pytest.raises(ValueError, match="percentile"):
        fit_csb_calibration(outlier_tensors(), percentile=0)
    with pytest.raises(ValueError, match="mode"):
        reconstruction_error(outlier_tensors(), "int4")
    with pytest.raises(ValueError, match="kinds"):
        collect_cache_tensors(torch.nn.Linear(2, 2), [0], kinds=("q",))


def test_save_load_round_trip(tmp_path):
    calib = fit_csb_calibration(outlier_tensors())
    path = save_csb_calibration(tmp_path / "c.pt", calib, {"alpha": 0.5, "model": "tiny"})
    loaded, meta = load_csb_calibration(path)
    assert meta == {"alpha": 0.5, "model": "tiny"}
    assert loaded.keys() == calib.keys()
    for key, c in calib.items():
        assert torch.equal(loaded[key].b, c.b) and torch.equal(loaded[key].scale, c.scale)
        assert torch.equal(loaded[key].eta, c.eta)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_csb_calibration(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    save_csb_calibration(corrupt, {(0, "out"): CSBCalibration(torch.ones(4), torch.tensor(0.1))})
    corrupt.write_bytes(corrupt.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt.pt.*corrupt"):
        load_csb_calibration(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=f"foreign.pt.*{FORMAT}"):
        load_csb_calibration(foreign)
    torch.save(torch.zeros(3), foreign)
    with pytest.raises(ValueError, match="foreign.pt"):
        load_csb_calibration(foreign)


@pytest.mark.parametrize("granularity,kinds", [("attn", ("out",)), ("kv", ("k", "v"))])
def test_collect_records_what_the_cache_stores(dit, granularity, kinds):
    plan = ((False,) * 3,) * 3 + ((True,) * 3,)  # 4 steps: the last one serves what step 3 stored
    cfg = DQARConfig.preset("always", always_reuse=False, static_plan=plan, granularity=granularity)
    ctl = apply_dqar(dit, cfg)
    try:
        tensors = collect_cache_tensors(dit, [0, 1], num_steps=4, kinds=kinds, max_per_layer=3)
        assert ctl.stats()["reuse_fraction"] == 0.25
        assert sorted(tensors) == sorted((i, k) for i in range(3) for k in kinds)
        for (i, kind), items in tensors.items():
            ts = [t for t, _ in items]
            assert len(items) == 3 and ts[0] > ts[1] > ts[2] and ts[-1] == 0.0  # first, middle and last step
            assert items[0][1].shape == (4, 16, 32)  # (2 labels x CFG, tokens, channels)
            assert torch.equal(items[-1][1], ctl.cached(i, kind))  # the last step is the cache's entry
    finally:
        remove_dqar(dit)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in dit.modules())


def test_error_table_covers_modes_on_a_model(dit):
    tensors = collect_cache_tensors(dit, [0, 1], num_steps=3)
    rows = error_table(tensors)
    assert {r["mode"] for r in rows} == {"fp16", "int8_tensor", "int8_channel", "csb", "csb_ssc"}
    by_mode = {m: sum(r["rel_l2"] for r in rows if r["mode"] == m) for m in ("fp16", "int8_tensor")}
    assert 0 < by_mode["fp16"] < by_mode["int8_tensor"]
    assert all(r["rel_l2"] < 0.05 for r in rows)

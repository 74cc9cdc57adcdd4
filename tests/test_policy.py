import pytest
import torch
from conftest import dit_inputs, run_steps

from dqar_lib import DQARConfig, apply_dqar
from dqar_lib.fitting.policy_fit import trace_features, train_policy
from dqar_lib.fitting.tracing import record_trace
from dqar_lib.method.policy import ReusePolicy, load_policy, save_policy


def test_policy_is_small():
    assert sum(p.numel() for p in ReusePolicy().parameters()) < 500_000


def test_train_policy_learns_a_separable_rule():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(400, 7, generator=g) * torch.tensor([0.01, 3.0, 1.0, 0.3, 0.5, 0.1, 1.0]) \
        + torch.tensor([0.9, 0, 1, .5, .5, .1, 1.0])
    y = (f[:, 1] > 0).float()  # cheap to reuse exactly when log-SNR is positive
    policy, losses = train_policy(f, y, epochs=200)
    assert losses[-1] < 0.2 * losses[0]
    assert ((policy(f) > 0.5).float() == y).float().mean() > 0.95
    with pytest.raises(ValueError, match=r"expected features \(n, 7\)"):
        train_policy(f[:, :3], y)


def test_trace_features_match_the_controller(dit):
    rows = record_trace(dit, [0, 1], num_steps=5)
    f = trace_features(rows, num_layers=3)
    assert f.shape == (15, 7)
    assert f[0, 0] == 1.0 and f[0, 1] == -10.0  # unknown before the first step: neutral values
    assert torch.allclose(f[3:6, 4], torch.tensor([0.0, 0.5, 1.0]))


def test_policy_file_roundtrip_and_errors(tmp_path, dit):
    policy = ReusePolicy(hidden=8)
    torch.nn.init.constant_(policy.net[-1].bias, 10.0)  # p_reuse ~ 1 everywhere
    path = tmp_path / "p.pt"
    save_policy(policy, path, meta={"note": "test"})
    loaded = load_policy(path)
    x = torch.randn(4, 7)
    assert torch.equal(loaded(x), policy(x))
    ctl = apply_dqar(dit, DQARConfig.preset("policy", policy_path=str(path), warmup=0.0, max_reuse_streak=10))
    run_steps(dit, dit_inputs)
    assert ctl.stats()["reuse_fraction"] == pytest.approx(0.8)
    assert {r["reason"] for r in ctl.trace()[3:]} == {"policy"}
    with pytest.raises(FileNotFoundError, match="policy file not found: .*missing.pt"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt.pt is corrupt or truncated"):
        load_policy(tmp_path / "corrupt.pt")
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a DQAR policy file"):
        load_policy(tmp_path / "foreign.pt")

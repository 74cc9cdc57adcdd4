import json

import pytest
import torch

from dqar_lib import load_model
from dqar_lib.models.train import TrainConfig, train_dit

TINY = dict(width=32, depth=1, heads=2, batch_size=4, warmup_steps=1, ckpt_every_minutes=1e-6)


def test_training_resumes_from_its_checkpoint(tmp_path):
    out, ckpt = tmp_path / "model", tmp_path / "ckpt.pt"
    first = train_dit(TrainConfig(total_steps=3, **TINY), out, ckpt)
    assert first["steps"] == 3 and ckpt.is_file()
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 3
    second = train_dit(TrainConfig(total_steps=5, **TINY), out, ckpt)
    assert second["steps"] == 5  # continued from step 3, not from scratch
    log = json.loads((out / "train_log.json").read_text())
    assert log["result"]["steps"] == 5 and "manifest" in log
    model = load_model(out)
    assert model.dqar_meta["guidance_scale"] == TrainConfig().guidance_scale
    assert next(model.parameters()).dtype == torch.float32


def test_warm_start_from_exported_weights_without_checkpoint(tmp_path):
    out = tmp_path / "model"
    train_dit(TrainConfig(total_steps=2, **TINY), out, tmp_path / "a.pt")
    res = train_dit(TrainConfig(total_steps=3, **TINY), out, tmp_path / "missing.pt")
    assert res["steps"] == 3


def test_history_survives_warm_start_and_resume(tmp_path):
    out = tmp_path / "model"
    train_dit(TrainConfig(total_steps=2, **TINY), out, tmp_path / "a.pt")
    train_dit(TrainConfig(total_steps=3, cooldown_steps=1, **TINY), out, tmp_path / "b.pt")  # warm start
    hist = json.loads((out / "train_log.json").read_text())["result"]["history"]
    assert [h["steps"] for h in hist] == [[0, 2], [2, 3]] and hist[1]["cooldown_steps"] == 1
    train_dit(TrainConfig(total_steps=4, **TINY), out, tmp_path / "b.pt")  # resume from b's checkpoint
    hist = json.loads((out / "train_log.json").read_text())["result"]["history"]
    assert [h["steps"] for h in hist] == [[0, 2], [2, 3], [3, 4]]


def test_learning_rate_warms_up_then_cools_down():
    from dqar_lib.models.train import learning_rate

    cfg = TrainConfig(lr=1.0, warmup_steps=10, total_steps=100, cooldown_steps=50, cooldown_floor=0.1)
    assert learning_rate(cfg, 0) == pytest.approx(0.1)  # warm-up
    assert learning_rate(cfg, 30) == 1.0  # plateau, before the cool-down
    assert learning_rate(cfg, 75) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down
    assert learning_rate(cfg, 99) == pytest.approx(0.1 + 0.9 * 0.02)
    assert learning_rate(TrainConfig(lr=1.0, warmup_steps=1, total_steps=100), 99) == 1.0  # no cool-down: flat
    with pytest.raises(ValueError, match="cooldown_floor"):
        TrainConfig(cooldown_floor=2.0)


def test_train_config_validates():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TrainConfig(batch_size=0)


def test_interrupt_stops_between_steps_and_saves(tmp_path):
    import os
    import signal
    import threading

    out, ckpt = tmp_path / "model", tmp_path / "ckpt.pt"
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    res = train_dit(TrainConfig(total_steps=10**6, **{**TINY, "ckpt_every_minutes": 60}), out, ckpt)
    assert res["interrupted"] and 0 < res["steps"] < 10**6
    assert torch.load(ckpt, weights_only=False)["step"] == res["steps"]  # nothing done was lost
    assert json.loads((out / "train_log.json").read_text())["result"]["steps"] == res["steps"]


def test_min_snr_weight():
    from dqar_lib.models.train import _loss_weight

    acp = torch.tensor([0.999, 0.5, 0.01])  # SNR 999, 1, ~0.01
    w = _loss_weight(acp, 5.0)
    assert torch.allclose(w, torch.tensor([5.0 / 999.0, 1.0, 1.0]), rtol=1e-4)
    assert torch.equal(_loss_weight(acp, 0.0), torch.ones(3))
    with pytest.raises(ValueError, match="min_snr_gamma"):
        TrainConfig(min_snr_gamma=-1.0)


def test_loss_curve_shades_each_run():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dqar_lib.publish import plots

    fig, ax = plt.subplots()
    history = [{"steps": [0, 300]}, {"steps": [300, 500], "cooldown_steps": 200}]
    plots.loss_curve(ax, [[100, 0.5], [200, 0.2], [400, 0.1]], history)
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["run 1", "run 2, lr cool-down 200"] and len(ax.patches) == 2
    assert ax.get_yscale() == "log" and list(ax.lines[0].get_xdata()) == [100, 200, 400]
    plt.close(fig)

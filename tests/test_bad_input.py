"""Bad input and noise: labels sample() refuses in one sentence, comma lists, the scaffold sweep's threshold
mapping, DiT loads without diffusers' id2label type warning, and calibrate_plan's progress bar with an estimate."""

import logging
import math
import re

import numpy as np
import pytest
import torch

import dqar_lib as dq
from dqar_lib.evaluation.cli_args import parse_list
from dqar_lib.evaluation.threshold_sweep import sweep_configs, tau_of, threshold_sweep, token_count
from dqar_lib.models.pipelines import tiny_dit_pipeline

RANGE = "class_labels must be integers in [0, 10) (DiTTransformer2DModel has 10 classes); got "


@pytest.mark.parametrize("labels,named", [
    ("cat", "'cat' (str)"), ([0, "cat"], "'cat' (str)"), (1.5, "1.5 (float)"), ([1.0], "1.0 (float)"),
    ([10], "10"), ([-1], "-1"), (True, "True (bool)"), (torch.tensor([1.0]), "an array of torch.float32"),
    (np.array([0.5]), "an array of float64"), ([[1, 2]], "[1, 2] (list)"),
])
def test_sample_refuses_bad_labels_in_one_sentence(dit, labels, named):
    with pytest.raises(ValueError) as e:
        dq.sample(dit, labels, num_steps=2, progress=False)
    assert str(e.value) == RANGE + named


@pytest.mark.parametrize("labels", [None, []])
def test_sample_refuses_no_labels(dit, labels):
    with pytest.raises(ValueError, match=r"^class_labels must be a non-empty list of integers in \[0, 10\)"):
        dq.sample(dit, labels, num_steps=2, progress=False)


@pytest.mark.parametrize("labels", [[1, 2], (1, 2), np.array([1, 2]), torch.tensor([1, 2]), [np.int64(1), 2]])
def test_sample_takes_integer_labels_of_any_kind(dit, labels):
    ref = dq.sample(dit, [1, 2], num_steps=2, progress=False).latents
    assert torch.equal(dq.sample(dit, labels, num_steps=2, progress=False).latents, ref)


def test_comma_lists_name_the_flag_and_the_bad_item():
    assert parse_list("207,233, 472", int, "--class-ids") == [207, 233, 472]
    assert parse_list("1.5,3", float, "--thresholds") == [1.5, 3.0]
    with pytest.raises(ValueError, match=r"^--class-ids takes integers separated by commas \(e.g. --class-ids "
                                         r"207,233,472\); got 'cat' in '207,cat'$"):
        parse_list("207,cat", int, "--class-ids")
    with pytest.raises(ValueError, match="got '' in '1,,2'"):
        parse_list("1,,2", int, "--class-ids")


def test_presets_take_the_short_names():
    assert dq.DQARConfig.preset("gates", tau=0.5, max_reuse_streak=4).decide.tau == 0.5
    assert dq.DQARConfig.preset("gates", tau=0.5, max_reuse_streak=4).decide.max_streak == 4
    assert dq.DQARConfig.preset("static", static_period=3).decide.period == 3
    assert dq.DQARConfig.preset("dqar") == dq.DQARConfig()


def test_thresholds_in_nats_map_to_tau_over_log_n():
    model = dq.load_model()
    n = token_count(model)
    assert n == 64  # 32 x 32 pixels in 4 x 4 patches
    assert tau_of(3.0, n) == pytest.approx(3.0 / math.log(64))
    assert tau_of(math.log(64), n) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"^entropy threshold 5 nats is outside \[0, log N\] = \[0, 4.16\] for this "
                                         r"model's N = 64 tokens .*give thresholds up to 4.15"):
        tau_of(5.0, n)
    with pytest.raises(ValueError, match="entropy threshold -1 nats"):
        tau_of(-1.0, n)
    cfgs = sweep_configs(model, [1.5, 4.0], [2, 6], max_gap=6)
    assert {k: (c.kind, round(c.decide.tau, 4), c.decide.max_streak) for k, c in cfgs.items()} == {
        (1.5, 2): ("gates", 0.3607, 2), (1.5, 6): ("gates", 0.3607, 5),  # the cap is min(limit, max gap - 1)
        (4.0, 2): ("gates", 0.9618, 2), (4.0, 6): ("gates", 0.9618, 5)}
    with pytest.raises(ValueError, match="--dqar-max-gap must be an integer >= 2"):
        sweep_configs(model, [1.5], [2], max_gap=1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(thresholds=[1.5, 5.0]), "entropy threshold 5 nats is outside"),
    (dict(labels=[207]), r"class_labels must be integers in \[0, 10\) \(DiTTransformer2DModel has 10 classes\); "
                         r"got 207"),
    (dict(reuse_limits=[0]), r"reuse limits must be integers >= 1"),
    (dict(runs=0), "--runs must be an integer >= 1"),
])
def test_the_sweep_refuses_before_it_runs(kwargs, message, monkeypatch):
    from dqar_lib.evaluation import threshold_sweep as ts

    monkeypatch.setattr(ts, "sample", lambda *a, **k: pytest.fail("sampled before refusing"))
    args = dict(thresholds=[1.5], reuse_limits=[2], max_gap=6, runs=1, num_steps=2, labels=[0]) | kwargs
    with pytest.raises(ValueError, match=message):
        threshold_sweep(dq.load_model(), progress=False, **args)


def test_a_dit_pipeline_loads_without_the_id2label_type_warning(tmp_path):
    tiny_dit_pipeline().save_pretrained(tmp_path / "dit")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("diffusers.pipelines.pipeline_utils")
    logger.addHandler(handler)
    try:
        pipe = dq.load_pipeline(tmp_path / "dit")
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "Expected types" in r.getMessage()]
    assert pipe.labels["airplane"] == 0 and pipe.labels["truck"] == 9  # the labels still arrive


def test_calibrate_plan_shows_a_progress_bar_with_an_estimate(capsys):
    dq.calibrate_plan(dq.tiny_dit(), [1, 2], budget=0.3, num_steps=5, seed=1000, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"skip costs: +\d+%.*\| \d+/3 \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]

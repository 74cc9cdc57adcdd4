import pytest
import torch

from dqar_lib import DQARConfig, get_controller, sample


@pytest.mark.parametrize("scheduler", ["ddim", "dpm"])
def test_schedulers_run_with_dqar(dit, scheduler):
    ref = sample(dit, [0, 1], num_steps=8, scheduler=scheduler, progress=False)
    res = sample(dit, [0, 1], num_steps=8, scheduler=scheduler, dqar="always", progress=False)
    assert res.images.shape == (2, 3, 8, 8) and 0.0 <= res.images.min() and res.images.max() <= 1.0
    assert res.stats["reuse_fraction"] == pytest.approx(7 / 8)
    assert len(res.controller.trace()) == 8 * 3
    assert not torch.equal(ref.images, res.images)
    assert get_controller(dit) is None  # attached for the call only


def test_off_preset_sample_is_bit_identical(dit):
    ref = sample(dit, [3, 4, 5], num_steps=6, progress=False)
    off = sample(dit, [3, 4, 5], num_steps=6, dqar=DQARConfig.preset("off"), progress=False)
    assert torch.equal(ref.latents, off.latents)


def test_seed_fixes_the_sample(dit):
    a, b = (sample(dit, [1], num_steps=4, seed=7, progress=False) for _ in range(2))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, sample(dit, [1], num_steps=4, seed=8, progress=False).images)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_steps=-3), "num_steps must be a positive integer, got -3"),
    (dict(num_steps=2.5), "num_steps must be a positive integer, got 2.5"),
    (dict(scheduler="euler"), "scheduler must be one of .*'euler'"),
    (dict(class_labels=[0, 10]), r"class_labels out of range \[0, 10\): \[10\]"),
    (dict(class_labels=[-1]), r"out of range .*\[-1\]"),
    (dict(class_labels=[]), "class_labels must be a non-empty"),
    (dict(guidance_scale=0.5), "guidance_scale must be >= 1"),
    (dict(dqar="turbo"), "unknown DQAR preset 'turbo'"),
])
def test_bad_arguments_name_themselves(dit, kwargs, message):
    args = dict(class_labels=[0], num_steps=4, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample(dit, args.pop("class_labels"), **args)

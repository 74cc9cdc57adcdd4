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
    (dict(class_labels=[0, 10]), r"class_labels must be integers in \[0, 10\) .*; got 10$"),
    (dict(class_labels=[-1]), r"class_labels must be integers in \[0, 10\) .*; got -1$"),
    (dict(class_labels=[]), "class_labels must be a non-empty"),
    (dict(guidance_scale=0.5), "guidance_scale must be >= 1"),
    (dict(dqar="turbo"), "unknown DQAR preset 'turbo'"),
])
def test_bad_arguments_name_themselves(dit, kwargs, message):
    args = dict(class_labels=[0], num_steps=4, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sample(dit, args.pop("class_labels"), **args)


def _embeds(n, T=5, C=16, seed=2):
    return torch.randn(n, T, C, generator=torch.Generator().manual_seed(seed))  # (N, T, C_cap)


def test_pixart_samples_from_caption_embeddings(pixart):
    emb = _embeds(2)
    ref = sample(pixart, prompt_embeds=emb, num_steps=5, guidance_scale=2.0, progress=False)
    off = sample(pixart, prompt_embeds=emb, num_steps=5, guidance_scale=2.0, dqar="off", progress=False)
    reused = sample(pixart, prompt_embeds=emb, num_steps=5, guidance_scale=2.0, dqar="always", progress=False)
    assert ref.images is None and ref.latents.shape == (2, 4, 8, 8)  # a latent model without a VAE
    assert torch.equal(ref.latents, off.latents)
    assert reused.stats["reuse_fraction"] > 0 and not torch.equal(ref.latents, reused.latents)
    other = sample(pixart, prompt_embeds=_embeds(2, seed=3), num_steps=5, guidance_scale=2.0, progress=False)
    assert not torch.equal(ref.latents, other.latents)  # the captions condition the sample
    neg = sample(pixart, prompt_embeds=emb, negative_embeds=_embeds(1, seed=4), num_steps=5, guidance_scale=2.0,
                 progress=False)
    assert not torch.equal(ref.latents, neg.latents)


@pytest.mark.parametrize("kwargs,message", [
    (dict(class_labels=[0]), "text-conditioned: pass prompt_embeds, not class_labels"),
    (dict(prompt_embeds=torch.zeros(2, 5, 7)), r"prompt_embeds must be a \(N, T, 16\) tensor .* got \(2, 5, 7\)"),
    (dict(prompt_embeds=None), "prompt_embeds must be a .* got NoneType"),
    (dict(prompt_embeds=_embeds(2), negative_embeds=torch.zeros(2, 4, 16)),
     r"negative_embeds must be \(1 or 2, 5, 16\)"),
])
def test_pixart_bad_conditioning_names_itself(pixart, kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(pixart, num_steps=2, guidance_scale=2.0, progress=False, **kwargs)


def test_dit_refuses_caption_embeddings(dit):
    with pytest.raises(ValueError, match="class-conditional: pass class_labels, not prompt_embeds"):
        sample(dit, [0], prompt_embeds=_embeds(1), num_steps=2, progress=False)

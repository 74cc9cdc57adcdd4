"""Real-pipeline plumbing: tiny pipelines, dq.dqar(pipe), SampleResult.save, load_model, calibrate, prompts."""

import io
import json
import warnings

import numpy as np
import pytest
import torch

import dqar_lib as dq
from dqar_lib.method.config import parse_overrides
from dqar_lib.models import prompts as prompts_mod
from dqar_lib.models.pipelines import conditions_for, tiny_dit_pipeline, tiny_pixart_pipeline


@pytest.fixture(scope="module")
def pixart_pipe():
    return tiny_pixart_pipeline()


def test_dqar_context_attaches_with_the_scheduler_and_removes_on_error(pixart_pipe):
    pipe = pixart_pipe
    with dq.dqar(pipe, "always") as ctl:
        assert dq.get_controller(pipe.transformer) is ctl and ctl.scheduler is pipe.scheduler
        assert ctl.config.cfg_layout == "cond_second"  # PixArt pipelines batch the negative prompt first
        pipe("a red cat", num_inference_steps=3, height=8, width=8, use_resolution_binning=False,
             max_sequence_length=8, output_type="np")
    assert ctl.stats()["reuse_fraction"] > 0 and dq.get_controller(pipe.transformer) is None
    with pytest.raises(KeyError), dq.dqar(pipe.transformer, "dqar"):
        raise KeyError("boom")
    assert dq.get_controller(pipe.transformer) is None
    with pytest.raises(TypeError, match="needs a diffusers pipeline with a .transformer"):
        with dq.dqar("not a pipe"):
            pass


def test_dqar_context_on_a_dit_pipeline_keeps_its_cfg_layout():
    pipe = tiny_dit_pipeline()
    with dq.dqar(pipe, dq.DQARConfig.preset("gates", tau=1.0, snr_lo=0.0)) as ctl:
        pipe(class_labels=[7, 3], num_inference_steps=6, output_type="np")
    assert ctl.config.cfg_layout == "cond_first" and ctl.stats()["reuse_fraction"] > 0
    assert dq.get_controller(pipe.transformer) is None


def test_prompt_mask_sets_p_and_changes_the_output(pixart_pipe):
    cond = conditions_for(pixart_pipe, 2, prompts=["a cat", "a dog near the river at night"])
    kw = dict(num_steps=2, progress=False, guidance_scale=2.0)
    masked = dq.sample(pixart_pipe.transformer, **cond.sample_kwargs(), dqar="off", **kw)
    assert masked.controller.prompt_length == max(cond.prompt_tokens) == 8  # 7 words and </s>
    unmasked = dq.sample(pixart_pipe.transformer, prompt_embeds=cond.prompt_embeds,
                         negative_embeds=cond.negative_embeds, **kw)
    assert not torch.equal(masked.latents, unmasked.latents)
    with pytest.raises(ValueError, match=r"prompt_mask must be \(2, 48\)"):
        dq.sample(pixart_pipe.transformer, prompt_embeds=cond.prompt_embeds, prompt_mask=torch.ones(2, 3), **kw)


def test_sample_result_save_writes_pngs_and_json(dit, tmp_path):
    res = dq.sample(dit, [1, 2, 3], num_steps=2, progress=False)
    paths = res.save(tmp_path)
    assert [p.name for p in paths] == ["image_000.png", "image_001.png", "image_002.png"]
    from PIL import Image

    back = torch.from_numpy(np.asarray(Image.open(paths[1]))).permute(2, 0, 1).float() / 255  # (3, H, W)
    assert torch.allclose(back, res.images[1], atol=1 / 255)
    meta = json.loads((tmp_path / "images.json").read_text())
    assert meta["images"] == [p.name for p in paths] and meta["latent_shape"] == [3, 3, 8, 8]


def test_a_preset_that_reuses_nothing_warns_once_naming_the_gate(dit):
    cfg = dq.DQARConfig.preset("gates", warmup=0.123)  # a config no other test samples with
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dq.sample(dit, [0, 1], num_steps=8, dqar=cfg, progress=False)
        dq.sample(dit, [0, 1], num_steps=8, dqar=cfg, progress=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1, msgs
    assert "the entropy gate refused every reuse: H_t in [0.9" in msgs[0] and "not below tau=0.92" in msgs[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dq.sample(dit, [0, 1], num_steps=8, dqar=cfg.replace(tau=1.0, snr_lo=1e6), progress=False)
    assert "the SNR gate refused every reuse: SNR_t in [" in str(caught[-1].message)


def test_load_model_takes_a_pipeline_folder_and_names_an_offline_hub_id(tmp_path, monkeypatch):
    pipe = tiny_dit_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    model = dq.load_model(tmp_path / "pipe")
    assert type(model).__name__ == "DiTTransformer2DModel"
    assert torch.equal(next(model.parameters()), next(pipe.transformer.parameters()))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="to load 'someone/any-dit': this machine is offline"):
        dq.load_model("someone/any-dit")
    with pytest.raises(ConnectionError, match="'someone/any-pipe'"):
        dq.load_pipeline("someone/any-pipe")


def test_calibrate_fits_a_reuse_budget_and_round_trips(dit, tmp_path, fresh_reuse_warnings):
    with pytest.warns(RuntimeWarning, match="DQAR reused nothing.*the entropy gate refused every reuse"):
        assert dq.sample(dit, [0, 1, 2, 3], num_steps=10, dqar="gates", progress=False).stats["reuse_fraction"] == 0
    cfg = dq.calibrate(dit, budget=0.3, num_steps=10, save_to=tmp_path)
    assert 0.9 < cfg.decide.tau < 1.0 and cfg.decide.snr_lo > 0
    run = dq.sample(dit, [0, 1, 2, 3], num_steps=10, dqar=cfg, progress=False)  # seed 0: not a calibration seed
    assert 0.1 <= run.stats["reuse_fraction"] <= 0.4
    assert dq.load_calibration(tmp_path) == cfg
    saved = json.loads((tmp_path / "dqar_calibration.json").read_text())
    assert saved["result"]["fit"]["budget"] == 0.3 and saved["result"]["fit"]["seeds"] == [1000, 1001]
    loose = dq.calibrate(dit, budget=None, error_budget=10.0, num_steps=10)
    assert loose.decide.tau >= cfg.decide.tau  # a loose error budget admits at least as much reuse


@pytest.mark.parametrize("kwargs,message", [
    (dict(budget=0.3, error_budget=0.1), "give exactly one of budget"),
    (dict(budget=1.5), r"target_reuse=1.5 is invalid"),
    (dict(base="forecast"), "the base config must use both"),
])
def test_calibrate_bad_arguments(dit, kwargs, message):
    with pytest.raises(ValueError, match=message):
        dq.calibrate(dit, num_steps=4, **kwargs)


def test_load_calibration_refuses_foreign_and_bad_files(tmp_path):
    from dqar_lib.artifacts import write_result

    write_result(tmp_path / "x.json", {"format": "something-else"})
    with pytest.raises(ValueError, match="is not a DQAR calibration file"):
        dq.load_calibration(tmp_path / "x.json")
    write_result(tmp_path / "y.json", {"format": "dqar-calibration/1", "config": {"tau": 0.9, "colour": 1}})
    with pytest.raises(ValueError, match=r"invalid DQAR config: unknown DQARConfig field\(s\) \['colour'\]"):
        dq.load_calibration(tmp_path / "y.json")


def test_parse_overrides_types_each_field():
    got = parse_overrides(["tau=0.9", "cfg_share=true", "snr_hi=inf", "max_reuse_streak_end=none", "granularity=attn",
                           "max_reuse_streak=3"])
    assert got == dict(tau=0.9, cfg_share=True, snr_hi=float("inf"), max_reuse_streak_end=None, granularity="attn",
                       max_reuse_streak=3)
    for bad, message in [("max_reuse_streak=1.5", "takes a int"), ("cfg_share=maybe", "takes a bool"),
                         ("=3", "not of the form name=value")]:
        with pytest.raises(ValueError, match=message):
            parse_overrides([bad])


def test_prompt_download_is_cached_until_refresh(tmp_path, monkeypatch):
    monkeypatch.setenv("DQAR_CACHE", str(tmp_path))
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(b'["a cat", "a dog"]')

    monkeypatch.setattr(prompts_mod.urllib.request, "urlopen", fake_urlopen)
    url = "https://example.org/p.json?x=1"
    path = prompts_mod.cached_download(url)
    assert prompts_mod.read_prompts(path) == ["a cat", "a dog"] and path.suffix == ".json"
    assert prompts_mod.cached_download(url) == path and len(calls) == 1
    prompts_mod.cached_download(url, refresh=True)
    assert len(calls) == 2


def test_the_shipped_prompt_set_varies_in_length():
    prompts = prompts_mod.read_prompts()
    words = [len(p.split()) for p in prompts]
    assert 64 <= len(prompts) <= 256 and len(set(prompts)) == len(prompts)
    assert min(words) <= 3 and max(words) >= 40

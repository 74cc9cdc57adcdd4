import json
import time

import pytest
import torch

from dqar_lib import load_model, sample
from dqar_lib.artifacts import read_result, write_result
from dqar_lib.evaluation.classifier import CifarResNet, class_accuracy, class_major, load_classifier, sample_accuracy
from dqar_lib.evaluation.metrics import proxy_fid, psnr, ssim
from dqar_lib.method.files import atomic_write
from dqar_lib.models.zoo import cifar_dit, tiny_dit


def test_load_model_roundtrip(tmp_path):
    m = tiny_dit()
    m.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "dqar_model.json").write_text(json.dumps({"guidance_scale": 3.0}))
    loaded = load_model(tmp_path / "m")
    assert loaded.dqar_meta["guidance_scale"] == 3.0
    x = dict(hidden_states=torch.randn(1, 3, 8, 8), timestep=torch.tensor([10]), class_labels=torch.tensor([1]))
    with torch.no_grad():
        assert torch.equal(m(**x).sample, loaded(**x).sample)


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model path not found: .*nowhere"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model(tmp_path / "empty")


def test_truncated_checkpoint_is_named(tmp_path):
    tiny_dit().save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors"):
        load_model(tmp_path / "m")


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    t0 = time.time()
    with pytest.raises(ConnectionError, match="cannot reach the Hugging Face hub.*Colab"):
        load_model("facebook/DiT-XL-2-256")
    assert time.time() - t0 < 10


def test_cifar_dit_is_small():
    m = cifar_dit()
    n = sum(p.numel() for p in m.parameters())
    assert 4e6 < n < 20e6  # fp16 well under 40 MB
    assert m.config.num_embeds_ada_norm == 10


def test_classifier_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="classifier file not found"):
        load_classifier(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is corrupt"):
        load_classifier(bad)
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="foreign.pt is not a DQAR classifier"):
        load_classifier(tmp_path / "foreign.pt")


def test_class_accuracy_counts_matches():
    clf = CifarResNet(8).eval()
    imgs = torch.rand(6, 3, 32, 32)
    pred = clf(imgs * 2 - 1).argmax(1)
    assert class_accuracy(imgs, pred, clf) == 1.0
    assert class_accuracy(imgs, (pred + 1) % 10, clf) == 0.0
    with pytest.raises(ValueError, match="do not match"):
        class_accuracy(imgs, pred[:3], clf)


def test_sample_accuracy_scores_class_major_samples_of_one_seed():
    torch.manual_seed(0)
    model, clf = tiny_dit(sample_size=32), CifarResNet(8).eval()
    assert class_major(3, 2) == [0, 0, 1, 1, 2, 2]
    res = sample(model, [0, 0, 1, 1, 2, 2], num_steps=3, guidance_scale=2.0, seed=5, progress=False)
    pred = clf(res.images * 2 - 1).argmax(1)
    want = (pred == torch.tensor([0, 0, 1, 1, 2, 2])).float().mean().item()
    assert sample_accuracy(model, 3, 2, seed=5, num_steps=3, guidance_scale=2.0, classifier=clf) == want
    with pytest.raises(ValueError, match="n_classes=11"):
        class_major(11, 8)
    with pytest.raises(ValueError, match="per_class=0"):
        sample_accuracy(model, 4, 0, classifier=clf)


def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(4, 3, 32, 32, generator=g)
    noisy = (ref + 0.01 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    assert 35 < psnr(noisy, ref) < 45  # sigma 0.01 -> about 40 dB
    assert psnr(ref, ref) == float("inf")
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(noisy, ref) > ssim(torch.rand(4, 3, 32, 32, generator=g), ref)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(ref[:2], ref)


def test_proxy_fid_separates_distributions():
    clf = CifarResNet(8).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(64, 3, 32, 32, generator=g), torch.rand(64, 3, 32, 32, generator=g)
    dark = a * 0.2
    assert proxy_fid(b, a, clf) < proxy_fid(dark, a, clf)


def test_result_has_manifest_and_atomic_write(tmp_path):
    p = write_result(tmp_path / "r.json", {"x": 1.5}, params={"steps": 50})
    data = read_result(p)
    assert data["result"] == {"x": 1.5}
    assert {"device", "torch", "diffusers", "commit", "params", "date"} <= set(data["manifest"])
    p.write_text('{"result": 1}')
    with pytest.raises(ValueError, match="carries no manifest"):
        read_result(p)
    p.write_text('{"manifest": {}, "res')
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_result(p)
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "half.txt") as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "half.txt").exists() and list(tmp_path.iterdir()) == [p]

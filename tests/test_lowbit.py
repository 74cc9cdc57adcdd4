import pytest
import torch
from conftest import dit_inputs

from dqar_lib.evaluation.lowbit import TorchaoPeer, block_linears
from dqar_lib.models.zoo import tiny_dit


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("mode", ["int8_weight_only", "int8_dynamic"])
def test_torchao_peer_quantizes(mode):
    """Real torchao tensors, a small error; attach, removal and bit-identity are tests/test_contract.py's."""
    torch.manual_seed(0)
    model, inputs = tiny_dit(), dit_inputs(t=500, batch=2)
    ref = _out(model, inputs)
    peer = TorchaoPeer(mode)
    peer.prepare(model, [0])
    peer.apply(model)
    q = _out(model, inputs)
    err = ((q - ref).norm() / ref.norm()).item()
    assert 0 < err < 0.1  # really quantized, and still close
    assert all(type(m.weight.data) is not torch.Tensor for m in block_linears(model).values())  # torchao tensors
    peer.remove(model)


def test_torchao_peer_rejects_bad_use():
    with pytest.raises(ValueError, match="int4"):
        TorchaoPeer("int4")
    with pytest.raises(RuntimeError, match="prepare"):
        TorchaoPeer().apply(tiny_dit())
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="FP8"):
            TorchaoPeer("float8_dynamic").prepare(tiny_dit())


def test_torchao_peer_runs_in_the_benchmark():
    from dqar_lib.evaluation.run_sampling import bench_sampling

    rows = bench_sampling(tiny_dit(), [0, 1], {"full": None, "int8": TorchaoPeer("int8_dynamic")}, num_steps=3,
                          repeats=1, warmup=0, progress=False)
    assert rows[1]["method"] == "int8" and rows[1]["config"] == {"peer": "torchao_int8_dynamic",
                                                                "mode": "int8_dynamic"}
    assert 0 < rows[1]["latent_rel_l2"] < 0.2 and rows[1]["reuse_fraction"] == 0.0

import torch

from dqar_lib.method.cache import ReuseCache, signature, storage_mode


def test_budget_refuses_and_counts():
    c = ReuseCache(budget_bytes=1000)
    x = torch.randn(10, 20)  # int8 per tensor: 204 bytes
    assert c.store((0, "out"), x, "int8_tensor")
    assert not c.store((1, "out"), torch.randn(100, 20), "int8_tensor")  # 2004 bytes > budget
    assert c.refused == 1 and len(c) == 1 and c.nbytes <= 1000


def test_replacing_an_entry_does_not_double_count():
    c = ReuseCache(budget_bytes=300)
    for _ in range(5):
        assert c.store((0, "out"), torch.randn(10, 20), "int8_tensor")
    assert c.nbytes == 204 and c.refused == 0


def test_invalidated_on_batch_shape_dtype_change():
    c = ReuseCache()
    x = torch.randn(4, 8, 16)
    c.store((0, "out"), x, "fp16")
    assert c.status((0, "out"), signature(x)) == "ok"
    assert c.status((0, "out"), signature(torch.randn(2, 8, 16))) == "invalidated"  # batch changed
    assert c.status((0, "out"), signature(x)) == "missing"  # dropped
    c.store((0, "out"), x, "fp16")
    assert c.status((0, "out"), signature(x.double())) == "invalidated"
    assert c.invalidated == 2


def test_nonfinite_entries_are_never_served():
    c = ReuseCache()
    x = torch.randn(4, 8)
    x[1, 2] = float("nan")
    c.store((0, "out"), x, "fp32")
    assert c.status((0, "out"), signature(x)) == "nonfinite" and c.nonfinite == 1
    y = torch.randn(4, 8)
    y[0, 0] = float("inf")
    c.store((1, "out"), y, "int8_channel")
    assert c.status((1, "out"), signature(y)) == "nonfinite" and c.nonfinite == 2


def test_mixed_mode_keeps_k_in_fp16_and_v_in_int8():
    assert storage_mode("mixed", "k") == "fp16"
    assert storage_mode("mixed", "v") == "int8_channel"
    assert storage_mode("mixed", "out") == "int8_channel"
    assert storage_mode("int8_tensor", "k") == "int8_tensor"

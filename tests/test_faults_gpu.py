"""CUDA-graph replay, pinned from outside (issue 35, part 2): a replayed call gives the eager model's output for its
own inputs (not a stale input buffer's, nor the last capture's), and a result handed out is not overwritten by
the next replay. CUDA only: skipped on a machine without a GPU (the CPU refusal is tests/test_bench.py's)."""

import pytest
import torch

from dqar_lib import tiny_dit
from dqar_lib.evaluation.graphed import CUDAGraphFull

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_a_replay_reads_this_calls_inputs_and_keeps_earlier_results():
    model = tiny_dit().cuda()
    g = torch.Generator().manual_seed(0)
    calls = [dict(hidden_states=torch.randn(2, 3, 8, 8, generator=g).cuda(), timestep=torch.full((2,), t).cuda(),
                  class_labels=torch.tensor(labels).cuda()) for t, labels in ((900, [1, 2]), (500, [3, 4]),
                                                                             (100, [5, 6]))]
    with torch.no_grad():
        eager = [model(**kw).sample.clone() for kw in calls]
        method = CUDAGraphFull()
        method.apply(model)
        try:
            got = [model(**kw).sample for kw in calls]  # the first captures, the others replay the same graph
            again = model(**calls[0]).sample
        finally:
            method.remove(model)
    assert len(method._graphs) == 1  # one shape: one graph, replayed
    for k, (a, b) in enumerate(zip(got, eager)):  # each held result is still its own call's
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"call {k}: not the eager output for its inputs")
    torch.testing.assert_close(again, eager[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(eager[1], eager[2])  # the calls differ, so a stale buffer would show

"""The change gate, pinned from outside (issue 35): the change a run's trace records for a layer at a step is the
relative L1 change of that layer's input against its input at the layer's last compute (not at the step before),
measured on inputs recorded with hooks; and the gate reuses exactly where that change is below delta. Guards
`DQARController._input_change` / `computed_input` and the hooks that call them."""

import pytest
import torch

from dqar_lib import DQARConfig, apply_dqar, remove_dqar, tiny_dit

STEPS = 9
TIMESTEPS = [950 - 100 * k for k in range(STEPS)]


def drive(cfg: DQARConfig):
    """Run tiny_dit under `cfg` once per timestep, the latent drifting (more each step): every block's input at
    every step, and the trace's rows."""
    model = tiny_dit()
    inputs = {i: [] for i in range(len(model.transformer_blocks))}

    def recorder(i):
        def pre(_m, args, kwargs):
            inputs[i].append((kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).double())
        return pre

    handles = [b.register_forward_pre_hook(recorder(i), with_kwargs=True)
               for i, b in enumerate(model.transformer_blocks)]
    g = torch.Generator().manual_seed(0)
    x, drift = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ctl = apply_dqar(model, cfg)
    try:
        with torch.no_grad():
            for k, t in enumerate(TIMESTEPS):
                model(hidden_states=x + 0.03 * k * k * drift, timestep=torch.full((2,), t),
                      class_labels=torch.tensor([1, 2]))
        rows = ctl.trace()
    finally:
        remove_dqar(model)
        for h in handles:
            h.remove()
    return inputs, rows


def relative_l1(h, ref) -> float:
    return float((h - ref).abs().mean() / ref.abs().mean())


def check_changes(inputs, rows, delta):
    """Each measured change against the input at the layer's last compute; the gate's decision from it."""
    last_compute, measured, since_compute = {}, 0, 0
    for r in rows:  # in call order: step by step, layer by layer
        i, s = r["layer"], r["step"]
        if r["change"] is not None:
            c = last_compute[i]
            want = relative_l1(inputs[i][s], inputs[i][c])
            assert r["change"] == pytest.approx(want, rel=1e-4), \
                f"layer {i}, step {s}: change {r['change']:.4g} is not the change since its last compute at step " \
                f"{c} ({want:.4g}; since the step before: {relative_l1(inputs[i][s], inputs[i][s - 1]):.4g})"
            measured += 1
            since_compute += s - c > 1
            if r["reason"] in ("change", "reuse"):  # the gate decided this layer: it reuses below delta only
                assert r["reuse"] == (want < delta), f"layer {i}, step {s}: change {want:.4g}, delta {delta}"
        if not r["reuse"]:
            last_compute[i] = s
    return measured, since_compute


@pytest.mark.parametrize("granularity, scope", [("block", "layer"), ("stack", "stack")])
def test_the_change_gate_measures_against_the_layers_last_compute(granularity, scope):
    # a delta between the step-to-step change and the change since the last compute: the reference decides
    cfg = DQARConfig.preset("forecast", granularity=granularity, use_change_gate=True, change_scope=scope,
                            delta=0.25, warmup=0.0, end_computes=0, max_reuse_streak=3, max_reuse_streak_end=None,
                            forecast_order=0, cache_mode="fp32")
    inputs, rows = drive(cfg)
    measured, since_compute = check_changes(inputs, rows, delta=0.25)
    assert measured >= 4 and since_compute >= 1  # some measured two or more steps after their compute
    assert any(r["reuse"] for r in rows) and any(r["reason"] == "change" and not r["reuse"] for r in rows)

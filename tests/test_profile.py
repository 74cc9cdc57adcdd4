"""Streak profiles (caps on consecutive reuses by progress) and the accumulated change signal of the change gate."""

import pytest
import torch

from dqar_lib import DQARConfig, sample, tiny_dit
from dqar_lib.fitting.tracing import trace_matrix
from dqar_lib.method.schedule import profile_cap

PROFILE = ((0.0, 1), (0.3, 2), (0.9, 1))


def test_profile_cap_is_the_cap_of_the_last_start_passed():
    assert [profile_cap(s, PROFILE, 7) for s in (0.0, 0.29, 0.3, 0.5, 0.89, 0.9, 1.0)] == [1, 1, 2, 2, 2, 1, 1]
    assert profile_cap(0.1, ((0.2, 3),), 5) == 5  # before the first start: the default (max_reuse_streak)
    assert profile_cap(0.5, None, 4) == 4


@pytest.mark.parametrize("profile", [(), ((0.5, 1), (0.3, 2)), ((0.0, 1), (0.0, 2)), ((0.0, -1),), ((1.5, 1),),
                                     ((0.0, 1.5),), ((0.0,),)])
def test_config_refuses_a_bad_profile_and_names_it(profile):
    with pytest.raises(ValueError, match="streak_profile"):
        DQARConfig.preset("dqar", streak_profile=profile)


def test_profile_survives_a_json_round_trip():
    cfg = DQARConfig.preset("dqar")
    d = cfg.to_dict()
    fields = d | {"decide": d["decide"] | {"streak_profile": [list(e) for e in cfg.decide.streak_profile]}}
    assert DQARConfig.from_dict(fields) == cfg


def skip_pattern(cfg: DQARConfig, steps: int = 50, scheduler: str = "ddim") -> str:
    res = sample(tiny_dit(), [1], num_steps=steps, guidance_scale=1.0, seed=0, scheduler=scheduler, dqar=cfg,
                 progress=False)
    reuse = trace_matrix(res.controller.trace(), "reuse").astype(bool)  # (S, L)
    assert (reuse == reuse[:, :1]).all(), "the whole stack decides at once"
    return "".join("s" if r else "C" for r in reuse[:, 0])


def test_the_dqar_preset_follows_its_profile_under_ddim():
    """DDIM-50 step k sits at progress (k + 1) / 50: one reuse a compute to 20 %, two to 90 %, then one; the last
    step computes (end_computes=1)."""
    assert skip_pattern(DQARConfig.preset("dqar")) == "Cs" * 4 + "Css" * 12 + "Cs" * 2 + "CC"
    # a flat profile is the flat cap
    flat = DQARConfig.preset("dqar", streak_profile=((0.0, 2),), end_computes=0)
    capped = flat.replace(streak_profile=None, max_reuse_streak=2, max_reuse_streak_end=None)
    assert skip_pattern(flat, 12) == skip_pattern(capped, 12) == "C" + "ssC" * 3 + "ss"


def block0_inputs(model: torch.nn.Module) -> tuple[list, object]:
    seen = []
    hook = model.transformer_blocks[0].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((kwargs.get("hidden_states", args[0] if args else None)).clone()),
        with_kwargs=True)
    return seen, hook


@pytest.mark.parametrize("scope", ["stack", "layer"])
def test_accumulated_change_sums_step_to_step_changes_since_the_last_compute(scope):
    model = tiny_dit()
    seen, hook = block0_inputs(model)
    cfg = DQARConfig.preset("dqar", use_change_gate=True, change_accumulate=True, change_scope=scope, delta=10.0,
                            streak_profile=((0.0, 2),), collect_stats=True)
    if scope == "layer":
        cfg = cfg.replace(granularity="block")
    try:
        res = sample(model, [1], num_steps=10, guidance_scale=1.0, seed=0, dqar=cfg, progress=False)
    finally:
        hook.remove()
    rows = sorted((r for r in res.controller.trace() if r["layer"] == 0), key=lambda r: r["step"])
    assert len(seen) == len(rows) == 10
    total = 0.0
    for s, r in enumerate(rows):
        if s == 0:
            assert r["change"] is None
        else:
            step = float((seen[s] - seen[s - 1]).abs().mean() / seen[s - 1].abs().mean())
            total += step
            assert r["change"] == pytest.approx(total, rel=1e-5), s
        if not r["reuse"]:
            total = 0.0  # a compute starts a new sum
    assert any(r["reuse"] for r in rows) and not all(r["reuse"] for r in rows[1:])


def test_accumulated_change_gate_decides(fresh_reuse_warnings):
    """delta = 0 refuses every reuse (and sample says so); a huge delta leaves the streak caps to decide."""
    none = DQARConfig.preset("dqar", use_change_gate=True, change_accumulate=True, change_scope="stack", delta=0.0)
    with pytest.warns(RuntimeWarning, match="DQAR reused nothing.*the 'change' rule refused every reuse"):
        assert "s" not in skip_pattern(none, 12)
    loose = none.replace(delta=1e9)
    assert skip_pattern(loose, 12) == skip_pattern(DQARConfig.preset("dqar"), 12)


def test_change_accumulate_needs_the_change_gate():
    with pytest.raises(ValueError, match="change_accumulate"):
        DQARConfig.preset("dqar", change_accumulate=True)

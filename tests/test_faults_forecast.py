"""What a forecast reuse serves, pinned from outside (issue 35): the stack residual a reused step hands the model is
recorded with hooks on the first and last block and compared with the combination of the recorded computes that
the config names. Guards `DQARController.cached` (which fitted weight row a step reads) and `_abscissa` (the
forecast's abscissa, `forecast_in`), whatever the cache and the rule do around them."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from dqar_lib import DQARConfig, apply_dqar, remove_dqar, tiny_dit
from dqar_lib.method.forecast import extrapolate
from dqar_lib.method.noise import NOISE_SCHEDULE

STEPS = 10


def karras_scheduler(steps: int = STEPS):
    """DPM-Solver++ on Karras sigmas: timesteps far from evenly spaced (999, 937, 864, 775, 663, 511, 301, ...)."""
    s = DPMSolverMultistepScheduler(**NOISE_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2,
                                    use_karras_sigmas=True)
    s.set_timesteps(steps)
    return s


def drive(cfg: DQARConfig, scheduler) -> tuple[list[float], list[bool], list[torch.Tensor]]:
    """Run tiny_dit under `cfg` once per timestep of `scheduler` (a sampler's view, the latent drifting from step to
    step): each step's timestep, whether the stack reused, and the residual the stack handed on (last block's
    output minus first block's input; at a reused step, what the cache served)."""
    model = tiny_dit()
    first, last = model.transformer_blocks[0], model.transformer_blocks[-1]
    residuals, h0 = [], {}

    def pre(_m, args, kwargs):
        h0["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    def post(_m, _args, _kwargs, out):
        residuals.append((out - h0.pop("x")).double())

    handles = [first.register_forward_pre_hook(pre, with_kwargs=True),
               last.register_forward_hook(post, with_kwargs=True)]
    g = torch.Generator().manual_seed(0)
    x, drift = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    ts = [float(t) for t in scheduler.timesteps]
    ctl = apply_dqar(model, cfg, scheduler=scheduler)
    try:
        with torch.no_grad():
            for k, t in enumerate(ts):
                model(hidden_states=x + 0.1 * k * drift, timestep=torch.full((2,), t),
                      class_labels=torch.tensor([1, 2]))
        reused = [r["reuse"] for r in ctl.trace() if r["layer"] == 0]
    finally:
        remove_dqar(model)
        for h in handles:
            h.remove()
    assert len(residuals) == len(ts) == len(reused)
    return ts, reused, residuals


def plan_of(skips, steps: int = STEPS, layers: int = 3):
    return tuple((s in skips,) * layers for s in range(steps))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding (the recorded residual is (h + served) - h)."""
    return float((a - b).norm() / b.norm()) < 1e-5


def test_a_fitted_plan_serves_the_weighted_sum_of_the_computes_it_names():
    """Each skipped step s serves sum_k w[s][k] R_(c_k), c the last len(w[s]) computes before s (oldest first):
    the row of step s, not of its neighbour (an off-by-one in the row read moves every fitted weight a step)."""
    skips = {3, 5, 6, 8}  # a lone skip after three computes, two in a row, one after a compute
    rows = tuple(((0.1 * s, -0.4 - 0.05 * s, 1.3 - 0.05 * s) if s in skips else None) for s in range(STEPS))
    cfg = DQARConfig.preset("forecast", cache_mode="fp32", static_plan=plan_of(skips), forecast_weights=rows)
    _, reused, R = drive(cfg, karras_scheduler())
    assert [s for s, r in enumerate(reused) if r] == sorted(skips)
    computes = []
    for s in range(STEPS):
        if s not in skips:
            computes.append(s)
            continue
        w = rows[s]
        want = sum(wk * R[c] for wk, c in zip(w, computes[-len(w):]))
        neighbour = rows[s - 1] or (0.0, 0.0, 1.0)
        assert close(R[s], want), f"step {s}: the reuse did not serve its row's weights {w} of computes " \
                                  f"{computes[-len(w):]}"
        assert not close(want, sum(wk * R[c] for wk, c in zip(neighbour, computes[-3:])))  # the test has power


@pytest.mark.parametrize("preset, order", [("forecast", 1), ("dqar", 2)])
def test_a_forecast_in_t_extrapolates_in_the_timestep_not_the_step_index(preset, order):
    """On an uneven schedule (Karras sigmas) the forecast in "t" is Newton's polynomial through the last computes
    at their timesteps, and it is not the one in the step index; in "step" it is the step index's."""
    skips = {3, 5, 6, 8}
    runs = {}
    for absc in ("t", "step"):
        cfg = DQARConfig.preset(preset, cache_mode="fp32", static_plan=plan_of(skips), forecast_in=absc)
        ts, reused, R = drive(cfg, karras_scheduler())
        assert [s for s, r in enumerate(reused) if r] == sorted(skips)
        runs[absc] = R
        computes = []
        for s in range(STEPS):
            if s not in skips:
                computes.append(s)
                continue
            pts = computes[-(order + 1):]
            in_t = extrapolate([(ts[c], R[c]) for c in pts], ts[s])
            in_step = extrapolate([(float(c), R[c]) for c in pts], float(s))
            want, other = (in_t, in_step) if absc == "t" else (in_step, in_t)
            assert close(R[s], want), f"forecast_in={absc!r}, step {s}: not the forecast in {absc!r}"
            assert not close(R[s], other), f"forecast_in={absc!r}, step {s}: the schedule is too even to tell"
    assert not close(runs["t"][5], runs["step"][5])

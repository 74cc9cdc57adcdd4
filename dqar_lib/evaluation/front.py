"""The speed-quality front's entries: every method against full compute, and against simply taking fewer steps.

    entries = front_entries(num_steps=50)                          # name -> (family, (method, steps[, scheduler]))
    rows = front_bench(model, labels, {n: e for n, (_, e) in entries.items()})   # dqar_lib.evaluation.run_sampling
    speed_at_psnr(pd.DataFrame(rows), family="family", targets=(35, 40, 45))    # dqar_lib.evaluation.analysis

An entry is (method, steps[, scheduler]). `front_bench` times them round-robin, `analysis` reads the front, and
`distribution_quality` scores an entry's samples (class accuracy, proxy FID).
"""

from __future__ import annotations

import torch

from .methods import run_method


def preset_entry(name: str = "dqar") -> str:
    """The front entry (`front_entries`' name) that the forecast preset `name` is: its streak profile and forecast
    order, or its streak caps."""
    from ..method.config import DQARConfig

    d = DQARConfig.preset(name).decide
    if d.streak_profile is not None:
        return _profile_entry(d.streak_profile, DQARConfig.preset(name).serve.order)
    return _forecast_entry(d.max_streak, d.max_streak_end)


def _forecast_entry(a: int, b: int) -> str:
    return f"DQAR forecast {a}->{b}"


def _profile_entry(profile, order: int) -> str:
    """E.g. "DQAR profile 1/2/1 at 0.3/0.9, order 2": the caps, the progress where each later cap starts."""
    caps, starts = "/".join(str(c) for _, c in profile), "/".join(f"{s:g}" for s, _ in profile[1:])
    return f"DQAR profile {caps}{' at ' + starts if starts else ''}, order {order}"


# the streak profiles the front sweeps (with the "dqar" preset's other fields), each with its forecast order: fewer
# to more reuses, 1/2/1 at 0.3/0.9 also at order 1 (what the quadratic forecast adds on the same plan)
PROFILES = ((((0.0, 1), (0.5, 2), (0.9, 1)), 2), (((0.0, 1), (0.4, 2), (0.9, 1)), 2),
            (((0.0, 1), (0.3, 2), (0.9, 1)), 2), (((0.0, 1), (0.3, 2), (0.9, 1)), 1),
            (((0.0, 1), (0.2, 2), (0.9, 1)), 2), (((0.0, 1), (0.3, 2), (0.94, 1)), 2),
            (((0.0, 1), (0.3, 2), (0.5, 3), (0.7, 2), (0.9, 1)), 2))


def distribution_quality(model: torch.nn.Module, method, reference: torch.Tensor, num_steps: int = 50,
                         scheduler: str = "ddim", per_class: int = 10, seed: int = 100, classifier=None,
                         chunk: int | None = None) -> dict:
    """Class accuracy and proxy FID (N = 10 * per_class, against `reference` images, e.g. CIFAR-10 test) of a
    method's samples, class-major labels on one seed (`run_method`, so any method or full compute).

    `chunk` samples the labels `chunk` at a time (a batch that stays in cache; None: all in one call), chunk k on
    seed `seed + 7919 * k` (a prime stride, so that runs on nearby seeds never share a chunk's noise)."""
    from .classifier import class_accuracy, class_major, load_classifier
    from .metrics import proxy_fid

    classifier = classifier if classifier is not None else load_classifier()
    labels = class_major(10, per_class)
    step = len(labels) if chunk is None else int(chunk)
    if step < 1:
        raise ValueError(f"chunk must be >= 1 (or None), got {chunk!r}")
    imgs = torch.cat([run_method(model, method, labels[i:i + step], num_steps=num_steps, scheduler=scheduler,
                                 seed=seed + 7919 * (i // step), progress=False).images
                      for i in range(0, len(labels), step)])  # (N, 3, H, W)
    return dict(class_accuracy=class_accuracy(imgs, labels, classifier),
                proxy_fid=proxy_fid(imgs, reference, classifier), quality_n=len(labels))


def front_entries(num_steps: int = 50, fewer_ddim=(10, 20, 25, 30, 40), fewer_dpm=(10, 15, 20, 25),
                  forecast_caps=((1, 3), (1, 4), (1, 5), (1, 6), (2, 5)),
                  plans: dict | None = None, profiles=PROFILES,
                  policy_thresholds=(0.02, 0.05, 0.1, 0.2, 0.4)) -> dict[str, tuple[str, tuple]]:
    """The front's entries, name -> (family, (method, steps[, scheduler])): full compute, fewer DDIM and
    DPM-Solver steps, DQAR's forecast preset over its knob (the reuse-streak cap, growing from the first value to
    the second), DQAR's streak profiles (the "dqar" preset's family: `profiles`, (profile, order) pairs), the
    learned forecast policy (the "dqar_policy" preset) over its threshold (`policy_thresholds`), DQAR's
    change gate (the stack's input change since it last computed, under the same caps), DQAR's
    gate preset and its order-0 static plan, each diffusers peer over its main knob, and
    cache-dit's DBCache over its threshold, plain and with its TaylorSeer calibrator. `plans` (budget -> config,
    from dqar_lib.fitting.plan_fit.calibrate_plans) adds DQAR's fitted plan over its budget."""
    from ..method.config import DQARConfig
    from .peers import get_peer

    fc = DQARConfig.preset("forecast")
    e = {"full": ("full compute", (None, num_steps))}
    e |= {f"DDIM-{k}": ("fewer DDIM steps", (None, k)) for k in fewer_ddim}
    e |= {f"DPM-Solver-{k}": ("fewer DPM-Solver steps", (None, k, "dpm")) for k in fewer_dpm}
    e |= {_forecast_entry(a, b): ("DQAR forecast", (fc.replace(max_reuse_streak=a, max_reuse_streak_end=b),
                                                         num_steps)) for a, b in forecast_caps}
    dq = DQARConfig.preset("dqar")
    e |= {_profile_entry(p, o): ("DQAR profile", (dq.replace(streak_profile=p, forecast_order=o), num_steps))
          for p, o in profiles}
    e |= {f"DQAR policy p>={t:g}": ("DQAR policy", (DQARConfig.preset("dqar_policy", policy_threshold=t), num_steps))
          for t in policy_thresholds}
    e |= {f"DQAR plan {b:.2f}": ("DQAR fitted plan", (cfg, num_steps)) for b, cfg in (plans or {}).items()}
    e |= {f"DQAR change {a}->{b}, delta={d}": ("DQAR change gate", (fc.replace(
        use_change_gate=True, change_scope="stack", delta=d, max_reuse_streak=a, max_reuse_streak_end=b), num_steps))
        for (a, b), d in (((1, 3), 0.05), ((1, 3), 0.1), ((2, 4), 0.1))}
    e |= {"DQAR gates (gates preset)": ("DQAR gates", ("gates", num_steps)),
          "DQAR static, order 0": ("DQAR static", (DQARConfig.preset("static", granularity="block"), num_steps)),
          "DQAR static, order 1": ("DQAR static", (DQARConfig.preset("static", granularity="block",
                                                                      forecast_order=1), num_steps))}
    peers = {"SeaCache": ("seacache", "threshold", (0.1, 0.18, 0.25, 0.4)),
             "MagCache": ("magcache", "threshold", (0.03, 0.06, 0.12)),
             "FirstBlockCache": ("fbc", "threshold", (0.05, 0.1, 0.2)),
             "TaylorSeer": ("taylorseer", "cache_interval", (3, 5)),
             "PAB": ("pab", "skip_range", (2, 3)),
             # cache-dit F1B0: 0.01 / 0.02 / 0.04 skip 11 / 17 / 23 of 50 steps on the CIFAR-10 DiT (4 labels)
             "cache-dit DBCache": ("cachedit", "residual_diff_threshold", (0.01, 0.02, 0.04)),
             "cache-dit DBCache+TaylorSeer": ("cachedit", "residual_diff_threshold", (0.01, 0.02),
                                              dict(taylorseer_order=1))}
    for fam, (peer, knob, values, *fixed) in peers.items():
        e |= {f"{fam} {knob}={v}": (fam, (get_peer(peer, **{knob: v}, **(fixed[0] if fixed else {})), num_steps))
              for v in values}
    return e


def forecast_variants(num_steps: int = 50, scheduler: str = "ddim") -> dict[str, tuple]:
    """What forecasting adds on fixed plans, name -> (method, steps, scheduler): the alternating plan (every block
    reuses on every second step after warmup) and the forecast preset's front-loaded plan, each served as stored
    (order 0) or extrapolated (order 1, 2; in the step index or the timestep), its history in fp32, fp16,
    INT8 stored whole, or "delta" (fp16 base, INT8 deltas). The first entry is full compute, the reference."""
    from ..method.config import DQARConfig

    plans = {"alternate": DQARConfig.preset("static", granularity="block", cache_mode="fp32"),
             "front-loaded": DQARConfig.preset("forecast", cache_mode="fp32"),
             "front-loaded, per block": DQARConfig.preset("forecast", cache_mode="fp32", granularity="block")}
    e = {"full": (None, num_steps, scheduler)}
    for plan, cfg in plans.items():
        e[f"{plan} | order 0 | fp32"] = (cfg.replace(forecast_order=0), num_steps, scheduler)
        for order in (1, 2):
            for absc in ("step", "t"):
                e[f"{plan} | order {order} in {absc} | fp32"] = (cfg.replace(forecast_order=order, forecast_in=absc),
                                                                num_steps, scheduler)
            for mode in ("fp16", "int8_channel", "delta"):
                e[f"{plan} | order {order} | {mode}"] = (cfg.replace(forecast_order=order, cache_mode=mode),
                                                        num_steps, scheduler)
    return e

"""The portability table: which diffusers image-transformer families DQAR attaches to, and what holds on each::

    rows = portability_rows()          # one dict per image transformer class in diffusers.models
    table = portability_table(rows)    # the same as a markdown table, for the book

For each family with a tiny config in `dqar_lib.models.tiny_families`, a few steps on its own scheduler check:
it attaches; the "off" preset is bit-identical to the bare model; after removal the output is bit-identical to
before; "always" reuses at every granularity that applies (and a refused one says why); a forecast
(`forecast_order=1`) reuses; the t DQAR reads is the scheduler's, step by step, whatever transform of it the
family takes (`t_on_schedule`); H_t and SNR_t are measured. A class with no tiny config says why. `text_stream` is
"joint" for MMDiT blocks (image and text streams), "cross-attention", "in self-attention" (text tokens joined
into the one sequence, or text K/V added inside the attention: Lumina2, PRX) or "none (class labels)".
"""

from __future__ import annotations

import math
import warnings

import torch

from ..method.config import GRANULARITIES, DQARConfig
from ..method.families import Streams, attachment_points
from ..method.hooks import apply_dqar, remove_dqar
from ..models.tiny_families import FAMILIES, FamilySpec

# Image-transformer classes without a tiny config here, and why (others: not tried in this session).
WHY_NOT = {
    "DreamLiteTransformer2DModel": "not a denoiser of its own: the spatial transformer inside the DreamLite U-Net "
                                   "(DQAR attaches to a pipeline's transformer, not to a U-Net's blocks)",
    "ErnieImageTransformer2DModel": "its blocks take the tokens sequence-first as x, (N, B, D), where DQAR's "
                                    "routes read a batch-first hidden_states, (B, N, D)",
    "ZImageTransformer2DModel": "its forward takes lists of per-image tensors (x, t, cap_feats), not a batched "
                                "hidden_states: DQAR's step hooks read hidden_states and timestep",
}
NOT_TRIED = "not tried in this session: no tiny config yet"
COLUMNS = ("family", "attaches", "off_identical", "removal_identical", "always_reuse", "granularities", "forecast",
           "text_stream", "t_on_schedule", "H_t", "SNR_t", "note")


def image_transformer_classes() -> list[str]:
    """Every image (2D) transformer class that `diffusers.models` exports (video, audio and 1D/3D ones left out)."""
    import diffusers.models as dm
    from diffusers.models.modeling_utils import ModelMixin

    names = []
    for name in dir(dm):
        cls = getattr(dm, name, None)
        if isinstance(cls, type) and issubclass(cls, ModelMixin) and ".transformers." in cls.__module__ \
                and ("2D" in name or "Image" in name) and "3D" not in name:
            names.append(name)
    return sorted(names)


def _run(model, spec: FamilySpec, scheduler) -> list[torch.Tensor]:
    """Sample as the family's pipeline does: the model's output at each of the scheduler's steps, stepped on."""
    scheduler.set_timesteps(len(scheduler.timesteps))  # a fresh run: the step index back to 0
    x = spec.inputs(float(scheduler.timesteps[0]))["hidden_states"]
    outs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model(**dict(spec.inputs(float(t)), hidden_states=x)).sample
            outs.append(out)
            learned_sigma = out.ndim == 4 and out.shape[1] == 2 * x.shape[1]  # (eps, variance): step on eps
            x = scheduler.step(out[:, :x.shape[1]] if learned_sigma else out, t, x).prev_sample
    return outs


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _reuse(model, spec, scheduler, config: DQARConfig) -> tuple[float | None, dict, str]:
    """(reuse fraction, the controller's trace summary, the refusal) of one attached run; None if refused."""
    try:
        ctl = apply_dqar(model, config, scheduler=scheduler)
    except ValueError as e:
        return None, {}, str(e)
    try:
        outs = _run(model, spec, scheduler)
    finally:
        remove_dqar(model)
    trace = ctl.trace()
    H = [r["H_t"] for r in trace if r["H_t"] is not None and math.isfinite(r["H_t"])]
    snr = [r["SNR_t"] for r in trace if r["SNR_t"] is not None and math.isfinite(r["SNR_t"])]
    first = trace[0]["layer"] if trace else 0  # the first layer that ran (Flux3's image_cond blocks need a cond)
    t_seen, ts = [r["t"] for r in trace if r["layer"] == first], [float(t) for t in scheduler.timesteps]
    on_schedule = len(t_seen) == len(ts) and all(abs(a - b) <= 1e-3 * max(1.0, b) for a, b in zip(t_seen, ts))
    finite = all(torch.isfinite(o).all() for o in outs)
    return ctl.stats()["reuse_fraction"] if finite else 0.0, {"H_t": H, "SNR_t": snr, "t": on_schedule}, ""


def check_family(name: str, spec: FamilySpec, steps: int = 3) -> dict:
    """One row of the table for the family `name` (see the module docstring)."""
    with warnings.catch_warnings():  # diffusers' own deprecation notes on the older classes, and torch's note on
        warnings.simplefilter("ignore", FutureWarning)  # the empty expert weights of a tiny MoE with experts off
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors", category=UserWarning)
        return _check_family(name, spec, steps)


def _check_family(name: str, spec: FamilySpec, steps: int) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row["family"] = name
    model = spec.make()
    scheduler = spec.scheduler()
    scheduler.set_timesteps(steps)
    base = _run(model, spec, scheduler)
    try:
        apply_dqar(model, "off", scheduler=scheduler)
    except Exception as e:  # the table says why, in the family's own words
        row.update(attaches=False, note=f"{type(e).__name__}: {e}")
        return row
    off = _run(model, spec, scheduler)
    remove_dqar(model)
    row.update(attaches=True, off_identical=_same(base, off))
    applied, refused, fractions, signals = [], [], {}, {}
    for g in GRANULARITIES:
        frac, sig, why = _reuse(model, spec, scheduler, DQARConfig.preset("always", granularity=g))
        if frac is None:
            refused.append(f"{g}: {why}")
            continue
        fractions[g], signals = frac, signals or sig
        if frac > 0:
            applied.append(g)
    row["removal_identical"] = _same(base, _run(model, spec, scheduler))
    row["always_reuse"] = round(fractions.get("block", 0.0), 3)
    row["granularities"] = ", ".join(applied)
    frac, _, _ = _reuse(model, spec, scheduler, DQARConfig.preset("always", granularity="block", forecast_order=1))
    row["forecast"] = "on" if frac else "off"
    points = attachment_points(model, per_block=True)
    joint = any(Streams(b).joint for _, _, b in points if b is not None)
    cross = any(getattr(m, "is_cross_attention", False) for m in model.modules())
    row["text_stream"] = ("joint" if joint else "cross-attention" if cross else
                          "in self-attention" if spec.text else "none (class labels)")
    row["t_on_schedule"] = bool(signals.get("t"))
    row["H_t"] = round(sum(signals["H_t"]) / len(signals["H_t"]), 3) if signals.get("H_t") else "none"
    row["SNR_t"] = round(max(signals["SNR_t"]), 3) if signals.get("SNR_t") else "none"
    if not signals.get("H_t"):
        refused.append("H_t: not measured (no separate to_q / to_k to read Q and K from: fused QKV)")
    row["note"] = "; ".join(refused)
    return row


def portability_rows(steps: int = 3, families: list[str] | None = None) -> list[dict]:
    """One row per image-transformer class in diffusers.models (or per name in `families`), checked or explained."""
    rows = []
    for name in families or image_transformer_classes():
        if name in FAMILIES:
            rows.append(check_family(name, FAMILIES[name], steps))
        else:
            rows.append(dict(dict.fromkeys(COLUMNS, ""), family=name, attaches="not checked",
                             note=WHY_NOT.get(name) or _not_tried(name)))
    return rows


def _not_tried(name: str) -> str:
    """NOT_TRIED, with the inputs the class's forward needs beyond the usual ones (what a tiny config must build)."""
    import inspect

    import diffusers.models as dm

    usual = {"self", "hidden_states", "timestep", "encoder_hidden_states", "return_dict"}
    params = inspect.signature(getattr(dm, name).forward).parameters.values()
    extra = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in usual
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return NOT_TRIED + (f" (its forward also needs {', '.join(extra)})" if extra else "")


def short_name(family: str) -> str:
    """The family without its class suffix, for narrow tables: "FluxTransformer2DModel" -> "Flux"."""
    for suffix in ("Transformer2DModel", "2DModel"):
        if family.endswith(suffix) and family != suffix:
            return family[:-len(suffix)]
    return family


def portability_table(rows: list[dict]) -> str:
    """The rows as a markdown table (checked families first)."""
    def cell(v):
        return "yes" if v is True else "no" if v is False else str(v).replace("|", "/")

    rows = sorted(rows, key=lambda r: r["attaches"] == "not checked")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)

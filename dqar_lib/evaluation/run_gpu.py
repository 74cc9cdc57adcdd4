"""The GPU benchmark (notebooks/07_gpu_benchmarks, full profile): DiT-XL/2 and PixArt-Σ, eager and compiled.

    python -m dqar_lib.evaluation.run_gpu --out DIR [--models facebook/DiT-XL-2-256 ...] [--batch 16] [--steps 50]

Weights are random unless the hub is reachable (`--hub`): speed then reflects the decision plan and the
architecture, not the weights, and quality is the latent's relative L2 change against full compute.
PixArt-Σ is conditioned on random caption embeddings (T5's width, 300 tokens): no text encoder runs.
Each model gets two runs in this process, eager and compiled, each against its own full-compute baseline
(`run_sampling.bench_sampling`, one JSON per run); `analysis.load_results` reads them back.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..artifacts import FRONT, run_commit
from ..method.config import DQARConfig
from ..models.sampling import is_text_conditioned
from ..models.zoo import REAL_MODELS, load_model, random_real, tiny_dit, tiny_pixart
from .analysis import write_bench
from .graphed import CUDAGraphFull
from .lowbit import TorchaoPeer
from .peers import PEERS
from .run_sampling import bench_sampling

DIT_MODELS = [m for m in REAL_MODELS if "DiT-XL" in m]
BENCH_MODELS = DIT_MODELS + [m for m in REAL_MODELS if "PixArt-Sigma" in m]
TINY = {"tiny": tiny_dit, "tiny-pixart": tiny_pixart}  # random test models: the harness on a CPU
CAPTION_TOKENS = 300  # PixArt-Σ's caption length
PLAN_BUDGETS = (0.5, 0.58, 0.66)  # 09's fitted plans replayed: its lowest budget, its bar point, its highest
# images per call (twice the rows with CFG), the protocol's batches: DiT-XL/2-256 16 rows, -512 8, PixArt-Σ 2 images
DEFAULT_BATCH = {"DiT-XL-2-256": 8, "DiT-XL-2-512": 4, "PixArt": 2}


def default_batch(name: str) -> int:
    """Images per sampling call for a model of BENCH_MODELS (DEFAULT_BATCH; 8 for any other)."""
    return next((b for key, b in DEFAULT_BATCH.items() if key in name), 8)


def conditions(model, batch: int, device: str) -> dict:
    """bench_sampling's conditioning: class labels for DiT, seeded random caption embeddings for PixArt."""
    if not is_text_conditioned(model):
        return dict(labels=[i % 1000 % model.config.num_embeds_ada_norm for i in range(batch)])
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(batch, CAPTION_TOKENS, model.config.caption_channels, generator=g)  # (N, T, C_cap)
    return dict(labels=None, prompt_embeds=emb.to(device, next(model.parameters()).dtype))


def replayed_plans(num_layers: int, path: str | Path = FRONT, budgets=None) -> dict:
    """The fitted stack plans of notebook 09's front (`path`; `budgets` default PLAN_BUDGETS), replayed on a model
    of `num_layers` blocks: name -> config. A plan is a skip list over the steps (every layer shares it), so it maps
    to any depth; it is served with a linear forecast (the forecast weights 09 fitted belong to the embedded
    model). Their quality is the embedded model's at the same plan (front.json); here they only time that plan.
    {} when the file is absent."""
    from ..artifacts import read_result
    from ..fitting.plan_fit import BASE

    if not Path(path).is_file():
        return {}
    plans = read_result(path)["result"]["plans"]
    out = {}
    for b in PLAN_BUDGETS if budgets is None else budgets:
        key = f"{b:.2f}"
        if key in plans:
            skip = plans[key]["skip"]
            out[f"DQAR plan {key}"] = BASE.replace(static_plan=tuple(tuple([bool(s)] * num_layers) for s in skip))
    return out


def methods(peers: bool, lowbit: tuple[str, ...] = (), num_layers: int | None = None, graphs: bool = False,
            steps: int = 50) -> dict:
    """Full compute (and, with `graphs`, full compute replayed from CUDA graphs: the strongest baseline), the
    all-attention-reused ceiling, DQAR's variants (the "dqar" preset's stack forecast, per block too, attention
    reuse under the gate preset), 09's fitted plans replayed at `num_layers` when `steps` is theirs (50), the
    static plan, torchao's real low-bit kernels (`lowbit` modes), and diffusers' peers."""
    P = DQARConfig.preset
    gates = dict(tau=1.0, snr_lo=0.0)  # random weights: the gates carry no signal, the schedule decides
    out = {"full": None}
    if graphs:
        out["full, CUDA graph"] = CUDAGraphFull()
    out |= {"all attention reused (ceiling)": "always",
            "dqar": "dqar", "dqar, per block": P("dqar", granularity="block")}
    if num_layers is not None and steps == 50:
        out |= replayed_plans(num_layers)
    out |= {"gates, attn": P("gates", granularity="attn", **gates),
            "gates, attn + CFG sharing": P("gates", granularity="attn", cfg_share=True, **gates),
            "static (DiTFastAttn-style)": "static"}
    out.update({f"torchao {mode}": TorchaoPeer(mode) for mode in lowbit})
    if peers:
        out.update({f"diffusers {k}": PEERS[k]() for k in ("pab", "fbc")})
    return out


def usable_lowbit(model, device: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """The torchao modes that quantize this model here, and why each other mode cannot (recorded in the JSON)."""
    ok, skipped = [], {}
    for mode in ("int8_dynamic", "float8_dynamic") if device == "cuda" else ("int8_dynamic",):
        try:
            TorchaoPeer(mode).prepare(model)
            ok.append(mode)
        except Exception as e:  # a kernel this GPU or dtype lacks must not cost the rest of the run
            skipped[mode] = f"{type(e).__name__}: {e}"
    return tuple(ok), skipped


def gpu_facts(device: str) -> dict:
    """The GPU's driver and CUDA versions and torchao's, for the manifest ({} off CUDA)."""
    if device != "cuda":
        return {}
    import importlib.metadata
    import subprocess

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        driver = "unknown"
    try:
        torchao = importlib.metadata.version("torchao")
    except importlib.metadata.PackageNotFoundError:
        torchao = None
    return dict(gpu=torch.cuda.get_device_name(), driver=driver, cuda=torch.version.cuda, torchao=torchao)


def _only(configs: dict, only: list[str] | None) -> dict:
    """`configs` cut to full compute and the methods named in `only` (None: all); a name it lacks is refused."""
    if only is None:
        return configs
    unknown = [k for k in only if k not in configs]
    if unknown:
        raise ValueError(f"--methods names {unknown}, which this run does not have; it has {list(configs)}")
    return {k: v for k, v in configs.items() if k == "full" or k in only}


def _bench(model, cond: dict, configs: dict, steps: int, repeats: int, compiled: bool, device: str,
           errors: dict) -> list[dict]:
    return bench_sampling(model, cond["labels"], configs, num_steps=steps, guidance_scale=1.5, repeats=repeats,
                          compile=compiled, compile_options={} if device == "cuda" else {"backend": "eager"},
                          prompt_embeds=cond.get("prompt_embeds"), errors=errors)


def run(models: list[str], out: Path, batch: int | None, steps: int, repeats: int, device: str,
        hub: bool, only: list[str] | None = None, modes: tuple[str, ...] = ("eager", "compiled")) -> list[Path]:
    """Benchmark each model in each of `modes` (eager, compiled), writing one JSON per run as it ends; `batch`
    None: per-model default. A method that fails (a kernel this GPU lacks, a recompile limit) is left out of its
    run's rows, and the file's `left_out` names it and why."""
    from ..method.hooks import self_attention_modules

    written, facts = [], gpu_facts(device)
    for name in models:
        if name in TINY:
            model, weights = TINY[name]().to(device), "random (tiny test model)"
        elif hub:
            model, weights = load_model(name, dtype=torch.float16).to(device), "hub"
        else:
            model, weights = random_real(name, torch.float16).to(device), "random (hub not reachable)"
        n = batch or default_batch(name)
        cond = conditions(model, n, device)
        lowbit, skipped = usable_lowbit(model, device) if only is None or any("torchao" in k for k in only) \
            else ((), {})  # trying torchao's modes quantizes the model: only when one is asked for
        for compiled in [m == "compiled" for m in modes]:
            t0 = time.perf_counter()
            configs = methods(not compiled, lowbit, len(self_attention_modules(model)), device == "cuda", steps)
            configs = _only(configs, only)
            left_out = {}  # methods that failed here: name -> why (their rows are left out)
            rows = _bench(model, cond, configs, steps, repeats, compiled, device, left_out)
            for k, why in left_out.items():
                print(f"{name} compiled={compiled}: {k!r} left out: {why}", flush=True)
            tag = f"{name.split('/')[-1]}-{'compiled' if compiled else 'eager'}"
            written.append(write_bench(out / f"{tag}.json", rows, dict(
                model=name, weights=weights, batch=n, steps=steps, repeats=repeats, guidance_scale=1.5,
                compiled=compiled, dtype=str(next(model.parameters()).dtype), lowbit_skipped=skipped,
                left_out=left_out, wall_s=time.perf_counter() - t0, **facts)))
            print(f"{tag}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return written


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--models", nargs="+", default=BENCH_MODELS, help=f"any of {BENCH_MODELS} or {list(TINY)}")
    p.add_argument("--batch", type=int, default=None, help=f"images per call (default {DEFAULT_BATCH}, else 8)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", nargs="+", default=None,
                   help="only these methods (and full compute); the names of run_gpu.methods")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--hub", action="store_true", help="load real weights from the hub (Colab)")
    a = p.parse_args(argv)
    run_commit()  # the run starts: its results name this commit
    bad = [m for m in a.models if m not in TINY and m not in BENCH_MODELS]
    if bad:
        p.error(f"unknown models {bad}; known: {BENCH_MODELS + list(TINY)}")
    for path in run(a.models, a.out, a.batch, a.steps, a.repeats, a.device, a.hub, a.methods, tuple(a.modes)):
        print(path)


if __name__ == "__main__":
    main()

"""Benchmark DQAR on a diffusers pipeline from the command line: full compute, DQAR and peers, same seeds.

    python -m dqar_lib.benchmark --model facebook/DiT-XL-2-256 --steps 50 --num-prompts 8 --output-dir runs/dit
    python -m dqar_lib.benchmark --model PixArt-alpha/PixArt-Sigma-XL-2-512-MS --prompts-file my.jsonl \
        --prompt-field caption --set tau=0.97 --peers pab fbc --output-dir runs/pixart
    python -m dqar_lib.benchmark --model ./my-pipeline --calibrate --budget 0.3 --sweep --output-dir runs/mine
    python -m dqar_lib.benchmark --model black-forest-labs/FLUX.1-dev --steps 28 --prompts "a red fox" \
        --height 512 --width 512 --output-dir runs/flux            # or --embeds embeds.pt (pre-encoded prompts)

The reference scaffold's commands run as written (`python scripts/benchmark_dqar.py` is this command):

    python -m dqar_lib.benchmark --model facebook/DiT-XL-2-256 --dtype fp16 --steps 30 --guidance 7.5 \
        --conditioning class --class-ids 207,233,472,898 --output-dir outputs/dit-xl
    python -m dqar_lib.benchmark --conditioning text --prompt-dataset-url URL --prompt-dataset-format jsonl \
        --prompt-dataset-field prompt --num-prompts 64      # --model defaults by --conditioning (DiT-XL/2, PixArt-Σ)

Lists take commas, spaces or both (`--class-ids 207,233 472`); --dtype takes fp16 / bf16 / fp32 or the full names.

DiT- and PixArt-style pipelines run in dqar_lib's own sampling loop (--scheduler, --compile, --calibrate, --peers).
Every other pipeline (SD3, Flux, ...) runs through its own `pipe(...)` under `dqar_lib.dqar(pipe, config)`, on its
own scheduler, timed to latents (`evaluation.run_pipeline`); full compute and DQAR (or a --sweep of it) run there.

Writes into --output-dir (default benchmark_outputs/): baseline/ (full compute's PNGs), dqar/ (DQAR's), <peer>/ (each
peer's), benchmark_results.json (a manifest and a row per method: the batch's median, mean (`mean_ms`) and standard
deviation (`std_ms`) over the repeats, time per image and per step, peak memory (`peak_memory_bytes`), reuse, PSNR /
SSIM against full compute, CLIP score or why it is missing; rewritten after each method, `complete` false until the
end), benchmark_plot.png, and with --sweep sweep_results.json and sweep_plot.png (runtime, memory and reuse against
tau and the reuse cap; images under sweep/images/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .artifacts import run_commit, write_result
from .evaluation.cli_args import CommaList
from .evaluation.clip import CLIP_MODEL, clip_scorer
from .evaluation.methods import DQARMethod
from .evaluation.peers import PEERS, get_peer
from .evaluation.run_pipeline import (
    PipelineCall,
    load_embeds,
    pipeline_call,
    pipeline_guidance,
    run_benchmark,
    run_pipeline_benchmark,
    sweep_configs,
)
from .fitting.calibrate import CALIBRATION_FILE, calibrate, load_calibration
from .method.config import PRESETS, DQARConfig, parse_overrides
from .models.pipelines import conditions_for, load_pipeline, pipeline_driven
from .models.prompts import cached_download, read_prompts
from .models.sampling import SCHEDULERS, is_text_conditioned
from .publish.benchmark_plots import benchmark_figure, save_png, sweep_figure

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# --model when only --conditioning is given (the scaffold's text command names no model)
DEFAULT_MODELS = {"class": "facebook/DiT-XL-2-256", "text": "PixArt-alpha/PixArt-Sigma-XL-2-512-MS"}
RESULTS, PLOT, SWEEP_RESULTS, SWEEP_PLOT = ("benchmark_results.json", "benchmark_plot.png", "sweep_results.json",
                                             "sweep_plot.png")


def parser(prog: str = "python -m dqar_lib.benchmark") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--model", help="a hub id (org/name) or a local diffusers pipeline folder (default by --conditioning: "
      + ", ".join(f"{k} {v}" for k, v in DEFAULT_MODELS.items()) + ")")
    a("--conditioning", choices=("class", "text"), help="what the model is conditioned on, checked against it "
      "(class: --class-ids; text: prompts); default: the model's own")
    a("--preset", default=None, help=f"DQAR preset: {', '.join(PRESETS)} (default dqar; gates with --calibrate or "
      "--sweep, which fit and scan the gates)")
    a("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
      help="override a DQARConfig field (repeatable): a short name or a dotted path, e.g. --set tau=0.9 "
      "--set decide.snr_lo=0.1 --set store.mode=fp16")
    a("--calibration", type=Path, help="a dqar_calibration.json (or its folder) to use instead of the preset")
    a("--calibrate", action="store_true", help="fit tau and snr_lo to this model first (dqar_lib.calibrate)")
    a("--budget", type=float, default=0.3, help="--calibrate's reuse budget (fraction of block calls)")
    a("--steps", type=int, default=20)
    a("--scheduler", default=None, choices=SCHEDULERS, help="dqar_lib's sampler for DiT / PixArt (default ddim); "
      "other pipelines step their own")
    a("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's own default)")
    a("--dtype", choices=list(DTYPES), default=None, help="default float16 on CUDA, float32 on CPU "
      "(fp16 / bf16 / fp32 name the same)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--class-ids", action=CommaList, kind=int, help="class-conditional pipelines, e.g. 207,233,472,898 (default: "
      "the first N of id2label)")
    a("--prompts", nargs="+", help="text-conditioned pipelines: prompts on the command line")
    a("--prompts-file", type=Path, help=".txt (one a line), .json (an array) or .jsonl (with --prompt-field)")
    a("--prompt-field", "--prompt-dataset-field", dest="prompt_field", default="prompt",
      help="the field of each .json / .jsonl object that holds the prompt")
    a("--prompt-dataset-url", help="a prompt file to download once into the local cache (see --refresh)")
    a("--prompt-dataset-format", choices=("txt", "json", "jsonl"), help="--prompt-dataset-url's format (default: "
      "its suffix, else txt)")
    a("--prompt-dataset-cache-dir", type=Path, help="where --prompt-dataset-url is cached (default $DQAR_CACHE/"
      "prompts, else ~/.cache/dqar/prompts)")
    a("--refresh", "--prompt-dataset-refresh", dest="refresh", action="store_true",
      help="download --prompt-dataset-url again")
    a("--num-prompts", type=int, default=8, help="images per method (prompts, class ids or embeddings, cycled)")
    a("--embeds", type=Path, help="pipelines run through pipe(...) (SD3, Flux, ...): a torch.save'd dict of "
      "pre-encoded pipe(...) arguments (prompt_embeds, pooled_prompt_embeds, ...) in place of prompts")
    a("--height", type=int, help="pipelines run through pipe(...): image height (default: the pipeline's)")
    a("--width", type=int, help="pipelines run through pipe(...): image width (default: the pipeline's)")
    a("--seed", type=int, default=0)
    a("--compile", action="store_true", help="full compute and peers with blocks compiled, DQAR regionally")
    a("--repeats", type=int, default=3)
    a("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    a("--peers", nargs="*", default=[], help=f"diffusers peers to add: {', '.join(PEERS)}")
    a("--sweep", action="store_true", help="scan tau x max_reuse_streak instead of comparing methods")
    a("--sweep-tau", action=CommaList, kind=float, default=[0.9, 0.95, 0.98, 1.0])
    a("--sweep-streak", action=CommaList, kind=int, default=[1, 2, 4])
    a("--no-clip", action="store_true", help=f"skip the CLIP score ({CLIP_MODEL})")
    a("--output-dir", type=Path, default=Path("benchmark_outputs"))
    a("--quiet", action="store_true", help="no progress bars")
    return p


def _check(p, a) -> None:
    for name in ("steps", "repeats", "num_prompts"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        p.error(f"--warmup must be >= 0, got {a.warmup}")
    if sum(x is not None for x in (a.prompts, a.prompts_file, a.prompt_dataset_url)) > 1:
        p.error("give at most one of --prompts, --prompts-file and --prompt-dataset-url")
    if a.class_ids and (a.prompts or a.prompts_file or a.prompt_dataset_url):
        p.error("give --class-ids (class-conditional pipelines) or prompts (text-conditioned ones), not both")
    if a.embeds is not None and (a.prompts or a.prompts_file or a.prompt_dataset_url or a.class_ids):
        p.error("give --embeds (pre-encoded prompts) or prompts / class ids, not both")
    for name in ("height", "width"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    url_only = [f for f, v in (("--prompt-dataset-format", a.prompt_dataset_format),
                               ("--prompt-dataset-cache-dir", a.prompt_dataset_cache_dir),
                               ("--prompt-dataset-refresh", a.refresh)) if v]
    if url_only and not a.prompt_dataset_url:
        p.error(f"{', '.join(url_only)} apply to --prompt-dataset-url; give it the file's URL (a --prompts-file's "
                "format is its suffix)")
    if a.conditioning == "class" and (a.prompts or a.prompts_file or a.prompt_dataset_url):
        p.error("--conditioning class takes --class-ids, not prompts; for prompts type --conditioning text")
    if a.conditioning == "text" and a.class_ids:
        p.error("--conditioning text takes prompts, not --class-ids; for class ids type --conditioning class")
    if a.model is None:
        if a.conditioning is None:
            p.error("give --model: a hub id such as " + " or ".join(DEFAULT_MODELS.values()) + ", or a local "
                    "diffusers pipeline folder (or --conditioning class / text for those defaults)")
        a.model = DEFAULT_MODELS[a.conditioning]
        print(f"--model {a.model} (the default for --conditioning {a.conditioning})", file=sys.stderr)
    if a.calibrate and a.calibration:
        p.error("give --calibrate (fit now) or --calibration FILE (a saved fit), not both")
    bad = [x for x in a.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peers {bad}; known peers: {', '.join(PEERS)}")


def base_config(a) -> tuple[str, DQARConfig]:
    """(name, config): a saved calibration, or the preset with the --set overrides (validated by DQARConfig)."""
    if a.calibration is not None:
        return "dqar (calibrated)", load_calibration(a.calibration).replace(**parse_overrides(a.overrides))
    preset = a.preset or ("gates" if a.calibrate or a.sweep else "dqar")
    name = "dqar" if preset == "dqar" else f"dqar ({preset})"
    return name + (" + " + ", ".join(a.overrides) if a.overrides else ""), \
        DQARConfig.preset(preset, **parse_overrides(a.overrides))


def prompts_of(a) -> list[str] | None:
    if a.prompts:
        return list(a.prompts)
    if a.prompt_dataset_url:
        path = cached_download(a.prompt_dataset_url, refresh=a.refresh, fmt=a.prompt_dataset_format,
                               folder=a.prompt_dataset_cache_dir)
        return read_prompts(path, a.prompt_field)
    if a.prompts_file is not None:
        return read_prompts(a.prompts_file, a.prompt_field)
    return None


def _conditions(a, pipe, prompts):
    """(conditions, scheduler label): dqar_lib's own loop conditions DiT / PixArt pipelines; the others (SD3, Flux,
    ...) run through `pipe(...)` with prompts or --embeds, on their own scheduler, where some flags cannot apply."""
    kind = type(pipe).__name__
    text = pipeline_driven(pipe) or is_text_conditioned(pipe.transformer)
    if a.conditioning is not None and a.conditioning != ("text" if text else "class"):
        raise ValueError(f"{a.model} is {'text-conditioned' if text else 'class-conditional'} ({kind}), not "
                         f"--conditioning {a.conditioning}: type --conditioning {'text' if text else 'class'}"
                         + (" with prompts" if text else " with --class-ids"))
    if pipeline_driven(pipe):
        given = [f for f, v in (("--class-ids", a.class_ids), ("--calibrate", a.calibrate), ("--compile", a.compile),
                                ("--peers", a.peers), ("--scheduler", a.scheduler)) if v]
        if given:
            raise ValueError(f"{a.model} is a {kind}, which the benchmark runs through pipe(...) with its own "
                             f"scheduler: {', '.join(given)} apply only to DiT- and PixArt-style pipelines")
        embeds = load_embeds(a.embeds) if a.embeds is not None else None
        if embeds is None and prompts is None:
            prompts = read_prompts()  # the shipped set
        size = {k: getattr(a, k) for k in ("height", "width") if getattr(a, k) is not None}
        return pipeline_call(pipe, a.num_prompts, prompts, embeds, **size), type(pipe.scheduler).__name__
    given = [f for f, v in (("--embeds", a.embeds), ("--height", a.height), ("--width", a.width)) if v is not None]
    if given:
        raise ValueError(f"{', '.join(given)} apply to pipelines run through pipe(...) (SD3, Flux, ...); {a.model} "
                         f"is a {kind}, which dqar_lib's own sampling loop conditions")
    if text and a.class_ids:
        raise ValueError(f"{a.model} is text-conditioned ({kind}): give prompts, not --class-ids")
    if not text and prompts:
        raise ValueError(f"{a.model} is class-conditional ({kind}): give --class-ids, not prompts")
    if text and prompts is None:
        prompts = read_prompts()  # the shipped set
    n = len(a.class_ids) if a.class_ids else a.num_prompts
    return conditions_for(pipe, n, a.class_ids, prompts), a.scheduler or "ddim"


def run(a) -> Path:
    """The benchmark of parsed arguments `a` (see `parser`); returns the results file."""
    name, cfg = base_config(a)
    prompts = prompts_of(a)
    dtype = DTYPES[a.dtype or ("float16" if str(a.device).startswith("cuda") else "float32")]
    pipe = load_pipeline(a.model, dtype=dtype, device=a.device)
    cond, scheduler = _conditions(a, pipe, prompts)
    driven = isinstance(cond, PipelineCall)
    if driven:
        cond.to(a.device, dtype)
    n = len(cond)
    guidance = pipeline_guidance(pipe) if a.guidance is None else a.guidance
    out = a.output_dir
    if a.calibrate:
        local = Path(a.model)
        target = local if local.is_dir() and _writable(local) else out
        cfg = calibrate(pipe, budget=a.budget, base=cfg, num_steps=a.steps, scheduler=scheduler,
                        guidance_scale=guidance, n=min(n, 4), prompts=prompts, save_to=target,
                        progress=not a.quiet)
        name = "dqar (calibrated)"
        print(f"calibrated: tau={cfg.decide.tau:.4f}, snr_lo={cfg.decide.snr_lo:.4f} -> {target / CALIBRATION_FILE}")
    scorer, clip_missing = (None, "--no-clip") if a.no_clip else clip_scorer(device=a.device)
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    params.update(pipeline=type(pipe).__name__, scheduler=scheduler, dtype=str(dtype), guidance=guidance,
                  dqar_config=cfg.to_dict())
    common = dict(num_steps=a.steps, guidance_scale=guidance, seed=a.seed, repeats=a.repeats, warmup=a.warmup,
                  scorer=scorer, progress=not a.quiet)
    if driven:
        def bench(methods, folder, on_row, folders):
            return run_pipeline_benchmark(pipe, cond, methods, folder, on_row=on_row, folders=folders, **common)
    else:
        common.update(scheduler=scheduler, compile=a.compile,
                      compile_options={} if a.device.startswith("cuda") else {"backend": "eager"})

        def bench(methods, folder, on_row, folders):
            return run_benchmark(pipe, cond, methods, folder, on_row=on_row, folders=folders, **common)
    extra = dict(conditions=cond.names, prompt_tokens=getattr(cond, "prompt_tokens", None) or None,
                 clip_model=CLIP_MODEL, clip_missing=clip_missing)
    title = f"{a.model}: {scheduler}-{a.steps}"
    if a.sweep:
        configs = sweep_configs(cfg, a.sweep_tau, a.sweep_streak)
        path = out / SWEEP_RESULTS

        def write_sweep(rows, complete=False):
            for r in rows[1:]:
                c = configs[r["method"]]
                r["sweep"] = dict(tau=c.decide.tau, cap=c.decide.max_streak)
            write_result(path, dict(complete=complete, rows=rows, **extra), params, a.device)

        rows = bench({"full": None, **configs}, out / "sweep", write_sweep, None)
        write_sweep(rows, complete=True)
        save_png(sweep_figure(rows[1:], title), out / SWEEP_PLOT)
        _report(rows)
        return path
    methods = {"full": None, name: DQARMethod(cfg)}
    methods.update({f"diffusers {p}": get_peer(p) for p in a.peers})
    folders = {"full": "baseline", name: "dqar", **{f"diffusers {p}": p for p in a.peers}}  # the scaffold's layout
    path = out / RESULTS

    def write(rows, complete=False):
        write_result(path, dict(complete=complete, rows=rows, **extra), params, a.device)

    rows = bench(methods, out, write, folders)
    write(rows, complete=True)
    save_png(benchmark_figure(rows, f"{title}, {n} images"), out / PLOT)
    _report(rows)
    return path


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK)


def _report(rows: list[dict]) -> None:
    print(f"{'method':32s} {'ms/image':>10s} {'speedup':>8s} {'reuse':>6s} {'PSNR':>7s}")
    for r in rows:
        print(f"{r['method'][:32]:32s} {r['ms_per_image']:10.1f} {r['speedup']:8.2f} {r['reuse_fraction']:6.2f} "
              f"{r['psnr']:7.2f}")


def main(argv: list[str] | None = None, prog: str = "python -m dqar_lib.benchmark") -> Path:
    p = parser(prog)
    a = p.parse_args(argv)
    _check(p, a)
    run_commit()  # the run starts: its results name this commit
    if a.quiet:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    try:
        path = run(a)
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        p.error(str(e))
    print(path, file=sys.stderr)
    return path


if __name__ == "__main__":
    main()

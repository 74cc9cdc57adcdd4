"""Multi-process sampling from the command line, each rank its seeds and its share of the images.

    torchrun --nproc_per_node=2 -m dqar_lib.distributed --model tiny --num-images 8 --steps 4 --out /tmp/x

(`--num-images`, not `--n`: torchrun's own parser takes `--n` for an abbreviation of its `--nnodes`.) The work is
`dqar_lib.evaluation.distributed.distributed_sample`; this module parses the arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .artifacts import run_commit
from .evaluation.distributed import distributed_sample
from .models.zoo import load_model, tiny_dit


def main(argv: list[str] | None = None) -> Path | None:
    """Command line:
    `torchrun --nproc_per_node=K -m dqar_lib.distributed --model tiny --num-images 8 --out DIR`."""
    ap = argparse.ArgumentParser(prog="python -m dqar_lib.distributed", description=main.__doc__)
    ap.add_argument("--model", default=None, help='"tiny" (dqar_lib.tiny_dit()), a model path, or the default')
    ap.add_argument("--num-images", type=int, default=8, help="images; labels cycle through the classes")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="images per batch (default: ceil(N / ranks), one batch a rank)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--dqar", default=None, help="a DQAR preset name; none: full compute")
    ap.add_argument("--out", required=True, help="output folder for samples.pt and samples.json")
    a = ap.parse_args(argv)
    run_commit()  # the run starts: its results name this commit
    model = tiny_dit() if a.model == "tiny" else load_model(a.model)
    if a.num_images < 1:
        ap.error(f"--num-images must be >= 1, got {a.num_images}")
    labels = torch.arange(a.num_images) % model.config.num_embeds_ada_norm
    return distributed_sample(model, labels, a.out, batch_size=a.batch_size, seed=a.seed, num_steps=a.steps,
                              scheduler=a.scheduler, guidance_scale=a.guidance, dqar=a.dqar)


if __name__ == "__main__":
    main()

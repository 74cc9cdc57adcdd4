"""Training the embedded CIFAR-10 DiT: DDPM epsilon loss, EMA, resumable checkpoints, loss log in data/."""

from __future__ import annotations

import contextlib
import copy
import json
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from ..artifacts import write_result
from ..method.files import atomic_write
from ..method.noise import NOISE_SCHEDULE
from .data import load_cifar10, to_tensor
from .zoo import cifar_dit


@dataclass
class TrainConfig:
    """Hyper-parameters of the embedded model's training run."""

    patch_size: int = 4  # 4 -> 64 tokens (CPU); 2 -> 256 tokens (GPU)
    width: int = 192
    depth: int = 8
    heads: int = 4
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 500
    cooldown_steps: int = 0  # linear lr decay to cooldown_floor * lr over the last cooldown_steps before total_steps
    cooldown_floor: float = 0.1
    ema_decay: float = 0.9995
    grad_clip: float = 1.0
    total_steps: int = 60_000  # an upper bound; a run stops earlier at max_minutes and resumes later
    max_minutes: float = 60.0
    ckpt_every_minutes: float = 5.0
    guidance_scale: float = 4.0  # recorded with the model: sample()'s default for it
    min_snr_gamma: float = 5.0  # Min-SNR-gamma loss weight min(SNR, gamma)/SNR (Hang et al. 2023); 0 turns it off
    bf16: bool = False  # bf16 autocast for the forward pass (1.6x per step on a CPU with avx512_bf16); fp32 weights
    seed: int = 0

    def __post_init__(self):
        for name in ("patch_size", "width", "depth", "heads", "batch_size", "total_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if self.cooldown_steps < 0 or not 0.0 <= self.cooldown_floor <= 1.0:
            raise ValueError(f"TrainConfig.cooldown_steps must be >= 0 and cooldown_floor in [0, 1], got "
                             f"{self.cooldown_steps} and {self.cooldown_floor}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"TrainConfig.min_snr_gamma must be >= 0 (0: no weighting), got {self.min_snr_gamma}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TrainConfig.ema_decay must lie in (0, 1), got {self.ema_decay}")


def noise_scheduler() -> DDPMScheduler:
    """The training noise schedule: NOISE_SCHEDULE (linear betas, 1000 steps, as DDPM's CIFAR-10), epsilon target."""
    return DDPMScheduler(**NOISE_SCHEDULE, prediction_type="epsilon", clip_sample=True)


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def export(ema: torch.nn.Module, out_dir: Path, cfg: TrainConfig, log: list, step: int, seconds: float,
           history: list | None = None) -> None:
    """Save the EMA weights in diffusers format (fp16 safetensors) with the loss curve and its manifest.

    ``history`` lists the runs that made the weights (step range, precision, loss weighting, lr schedule), since
    a resumed run may differ from the one before it and the manifest's params only describe the last.
    """
    model = copy.deepcopy(ema).to(torch.float16)
    model.save_pretrained(out_dir, safe_serialization=True)
    sched = noise_scheduler()
    sched.save_pretrained(out_dir / "scheduler")
    (out_dir / "dqar_model.json").write_text(json.dumps(
        {"guidance_scale": cfg.guidance_scale, "num_classes": 10, "null_class": 10, "data": "CIFAR-10 (JPEG)",
         "pixel_space": True}, indent=1))
    write_result(out_dir / "train_log.json",
                 {"loss": log, "steps": step, "images_seen": step * cfg.batch_size, "train_seconds": seconds,
                  "history": history or []},
                 params=asdict(cfg))


@contextlib.contextmanager
def _deferred_interrupts():
    """Turn Ctrl-C / SIGTERM into a flag the loop checks between steps, so a stop never lands mid-update."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _loss_weight(acp_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample weight of the epsilon loss: min(SNR_t, gamma) / SNR_t, or 1 where gamma is 0."""
    if gamma <= 0:
        return torch.ones_like(acp_t)
    snr = acp_t / (1 - acp_t)
    return snr.clamp(max=gamma) / snr


def train_dit(cfg: TrainConfig, out_dir: Path | str, ckpt: Path | str, device: str = "cpu") -> dict:
    """Train (or resume) the embedded DiT until total_steps or max_minutes; export the EMA model to out_dir."""
    out_dir, ckpt = Path(out_dir), Path(ckpt)
    torch.manual_seed(cfg.seed)
    x, y = load_cifar10("train")
    x, y = to_tensor(x), torch.from_numpy(y)  # (50000, 3, 32, 32) in [-1, 1], (50000,)
    model = cifar_dit(cfg.patch_size, cfg.width, cfg.depth, cfg.heads).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = noise_scheduler()
    step, seconds, log, history = 0, 0.0, [], []
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, seconds, log = state["step"], state["seconds"], state["log"]
        history = state.get("history", [])
        torch.set_rng_state(state["rng"])
    elif (out_dir / "config.json").is_file():  # no optimizer state: warm-start from the exported EMA weights
        exported = type(model).from_pretrained(out_dir, torch_dtype=torch.float32)
        model.load_state_dict(exported.state_dict())
        ema.load_state_dict(exported.state_dict())
        prev = json.loads((out_dir / "train_log.json").read_text())["result"]
        step, seconds, log = prev["steps"], prev["train_seconds"], prev["loss"]
        history = prev.get("history", [])
    acp = sched.alphas_cumprod.to(device)
    start = step
    t0 = last_ckpt = time.time()
    run_loss, run_n = 0.0, 0

    def save(step: int) -> float:
        elapsed = seconds + time.time() - t0
        runs = history + [_segment(cfg, start, step, device)]
        _save_ckpt(ckpt, dict(model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), step=step,
                              seconds=elapsed, log=log, rng=torch.get_rng_state(), config=asdict(cfg),
                              history=runs))
        export(ema, out_dir, cfg, log, step, elapsed, runs)
        return elapsed

    bar = tqdm(total=cfg.total_steps, initial=step, desc="train DiT", mininterval=10)
    with _deferred_interrupts() as interrupt:
        while step < cfg.total_steps and time.time() - t0 < cfg.max_minutes * 60 and not interrupt["stop"]:
            mse = _train_step(model, ema, opt, x, y, acp, cfg, step, device)
            step += 1
            run_loss, run_n = run_loss + mse, run_n + 1
            if step % 100 == 0:
                log.append([step, run_loss / run_n])
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}")
                run_loss, run_n = 0.0, 0
            bar.update(1)
            if time.time() - last_ckpt > cfg.ckpt_every_minutes * 60:
                save(step)
                last_ckpt = time.time()
    bar.close()
    seconds = save(step)
    return {"steps": step, "seconds": seconds, "final_loss": log[-1][1] if log else None,
            "interrupted": interrupt["stop"]}


def _segment(cfg: TrainConfig, start: int, step: int, device: str) -> dict:
    """One entry of the training history: the steps this run took and how."""
    return {"steps": [start, step], "device": f"{device}, {torch.get_num_threads()} threads",
            "precision": "bf16 autocast, fp32 weights" if cfg.bf16 else "fp32",
            "loss": f"Min-SNR-{cfg.min_snr_gamma:g} weighted epsilon MSE" if cfg.min_snr_gamma else "epsilon MSE",
            "lr": cfg.lr, "cooldown_steps": cfg.cooldown_steps, "total_steps": cfg.total_steps}


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The lr at a 0-based step: linear warm-up, constant, then a linear cool-down to cooldown_floor * lr."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.cooldown_steps:
        left = (cfg.total_steps - step) / cfg.cooldown_steps  # 1 where the cool-down starts, 0 at the end
        lr *= cfg.cooldown_floor + (1 - cfg.cooldown_floor) * min(1.0, max(0.0, left))
    return lr


def _train_step(model, ema, opt, x, y, acp, cfg: TrainConfig, step: int, device: str) -> float:
    """One optimizer step on a random batch, then the EMA update; returns the batch's plain epsilon MSE."""
    idx = torch.randint(0, x.shape[0], (cfg.batch_size,))
    x0 = x[idx].to(device)  # (B, 3, 32, 32)
    flip = torch.rand(cfg.batch_size, device=device) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)  # random horizontal flip
    labels = y[idx].to(device)  # the model drops labels to the null class with p=0.1 itself
    t = torch.randint(0, 1000, (cfg.batch_size,), device=device)
    eps = torch.randn_like(x0)
    a = acp[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
        pred = model(x_t, timestep=t, class_labels=labels).sample
    per_sample = (pred.float() - eps).pow(2).mean(dim=(1, 2, 3))  # (B,)
    loss = (per_sample * _loss_weight(acp[t], cfg.min_snr_gamma)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for g in opt.param_groups:
        g["lr"] = learning_rate(cfg, step)
    opt.step()
    n = step + 1  # optimizer steps taken, this one included
    decay = min(cfg.ema_decay, (1 + n) / (10 + n))  # DiT's EMA warm-up: short memory at the start
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)
    return per_sample.mean().item()


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Train the embedded CIFAR-10 DiT (resumable).")
    p.add_argument("--out", default="runs/export", help="export folder; copy it to data/models/ to ship it")
    p.add_argument("--ckpt", default="runs/cifar10-dit.pt")
    p.add_argument("--max-minutes", type=float, default=60.0)
    p.add_argument("--total-steps", type=int, default=60_000)
    p.add_argument("--cooldown-steps", type=int, default=0, help="linear lr decay over the last N steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster where the CPU/GPU has bf16 units)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = TrainConfig(max_minutes=a.max_minutes, total_steps=a.total_steps, bf16=a.bf16,
                      cooldown_steps=a.cooldown_steps)
    print(train_dit(cfg, a.out, a.ckpt, a.device))

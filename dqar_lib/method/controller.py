"""The controller: owns the per-step state, plans each step's reuse as plain bools, keeps the trace.

The rule itself (which layer may reuse, and whether a fresh output is worth storing) lives in `rule`;
the controller steps a `rule.RuleState` with the host numbers it measured and records what each layer did.
"""

from __future__ import annotations

import time

import torch

from .cache import ReuseCache, storage_mode
from .config import DQARConfig
from .gates import tau_for_prompt
from .host import HostValue, host_float
from .prediction import step_x0
from .rule import RuleState
from .schedule import progress
from .stats import latent_change, latent_norm, latent_snr
from .storage import load_csb_calibration

TRACE_FIELDS = ("step", "t", "layer", "H_t", "SNR_t", "x_norm", "x_change", "reuse", "reason", "change")
_H, _SNR, _REASON = (TRACE_FIELDS.index(f) for f in ("H_t", "SNR_t", "reason"))  # positions in a stored row


class DQARController:
    """Per-run state of DQAR on one transformer. Created by `apply_dqar`; the hooks call into it.

    Each transformer forward is one step: `begin_step` plans every layer from host numbers,
    the hooks ask `try_reuse(i, ...)` and report back, `end_step` measures SNR_t and ||x_t||
    for the next step's decisions (read asynchronously, one step late, so nothing syncs).
    """

    def __init__(self, config: DQARConfig, layer_names: list[str], scheduler=None, prompt_length: int | None = None):
        self.config = config
        self.layer_names = list(layer_names)
        self.num_layers = len(layer_names)
        self.scheduler = scheduler
        self.prompt_length = self._fixed_prompt_length = prompt_length
        self.num_train_timesteps = int(getattr(getattr(scheduler, "config", None), "num_train_timesteps", 1000))
        self.cache = ReuseCache(config.store.budget_bytes)
        self.calibration = None
        if config.store.mode == "csb":
            self.calibration, _ = load_csb_calibration(config.store.calibration)
            kinds = {"kv": ("k", "v"), "attn": ("out",), "block": ("res",), "stack": ("stack",)}[config.granularity]
            missing = [(i, k) for i in range(self.num_layers) for k in kinds if (i, k) not in self.calibration]
            if missing:
                raise ValueError(f"{config.store.calibration} has no calibration for (layer, kind) {missing[:4]}"
                                 f"{' ...' if len(missing) > 4 else ''}: it was fitted for another model, or for "
                                 f"another granularity than {config.granularity!r} (which caches {kinds})")
        self.policy = None
        if config.kind == "policy":
            from .policy import load_policy

            self.policy = load_policy(config.decide.path)
        self._ts_obj = None
        self._ts_host: list[float] = []
        self.reset()

    # ---- run state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the run: cache, streaks, statistics, trace and counters."""
        L = self.num_layers
        self.cache.clear()
        self.cache.reset_counters()
        self.rule = RuleState(L)  # the step index, streaks and steps since warmup
        self.t: float | None = None
        self.s = 0.0
        self._calls_since_ts = 0
        self.H: list[HostValue | None] = [None] * L
        self.snr: HostValue | None = None
        self.x_norm: HostValue | None = None
        self.x_change: HostValue | None = None  # the latent's relative L1 change over the last step (a policy feature)
        self.x_last: torch.Tensor | None = None  # the latent the last step saw, for x_change
        self.inputs: list[torch.Tensor | None] = [None] * L  # each layer's input at its last compute (change gate)
        self.previous: list[torch.Tensor | None] = [None] * L  # its input at the last step (change_accumulate)
        self.accumulated = [0.0] * L  # the summed step-to-step change since its last compute (change_accumulate)
        self.change: list[float | None] = [None] * L
        self.step_change: float | None = None
        self.plan: list[tuple[bool, str]] = [(False, "missing")] * L
        self.keep = [True] * L  # whether layer i's output this step may be served later (else: not stored)
        self.stack_input: torch.Tensor | None = None  # "stack": the first block's input on a step that computes
        self.first: tuple[bool, str] = (False, "missing")  # what layer 0 did this step ("stack": every layer does)
        self.reused = [0] * L
        self.computed = [0] * L
        self.cfg_shared = 0
        self.peak_cache_bytes = 0
        self.decision_seconds = 0.0  # host time spent planning steps (gates, schedule, policy)
        self.rows: list[tuple] = []

    def host_timestep(self, t) -> float | None:
        """The step's timestep as a float, without reading a device tensor when a scheduler was given."""
        if t is None:
            return None
        if not torch.is_tensor(t):
            return float(t)
        ts = self._host_schedule() if t.device.type != "cpu" else None
        if ts:
            t_host = ts[self._calls_since_ts % len(ts)]
            self._calls_since_ts += 1
            return t_host
        return float(t.reshape(-1)[0])  # a CPU read, or a device read when no scheduler was given

    def begin_step(self, t: float | None, prompt_length=None) -> None:
        """Start a step at host timestep t: a rise in t starts a new run; then plan every layer.

        `prompt_length` (an int, or a callable giving one) is read once per run, at its first step.
        """
        if t is not None and self.t is not None and t > self.t:
            self.reset()
        t0 = time.perf_counter()
        self.s = progress(t, self.num_train_timesteps) if t is not None else 0.0
        step = self.rule.advance(self.s, self.config.warmup)
        self.change, self.step_change = [None] * self.num_layers, None
        if step == 0 and prompt_length is not None and self._fixed_prompt_length is None:
            self.prompt_length = prompt_length() if callable(prompt_length) else prompt_length
        self.t = t
        H = [host_float(h) for h in self.H]
        snr = host_float(self.snr)
        p = self._policy_probs(H, snr) if self.policy is not None else None
        left = self.steps_left()
        self.plan = self.rule.plan(self.config, self.s, H, snr, p, self.prompt_length, left)
        t_next = self._next_t()
        s_next = progress(t_next, self.num_train_timesteps) if t_next is not None else None
        ts = self._host_schedule()
        if self.config.serve.order and ts:  # a forecast needs the computes before a reuse, not only the last
            ahead = ts[self.step + 1:self.step + 1 + self.config.history]
            s_ahead = [progress(t, self.num_train_timesteps) for t in ahead]
            self.keep = self.rule.keep_ahead(self.config, s_ahead, self.prompt_length, left)
        else:
            self.keep = self.rule.keep(self.config, s_next, self.prompt_length, left)
        self.decision_seconds += time.perf_counter() - t0

    @property
    def step(self) -> int:
        """This run's step index (-1 before its first step)."""
        return self.rule.step

    def _host_schedule(self) -> list[float] | None:
        """The scheduler's timesteps as host floats, read once per `set_timesteps` (None without a scheduler)."""
        ts = getattr(self.scheduler, "timesteps", None)
        if ts is None:
            return None
        if ts is not self._ts_obj:  # set_timesteps was called: a new run, read the schedule once
            self._ts_obj, self._ts_host, self._calls_since_ts = ts, [float(v) for v in ts.cpu()], 0
        return self._ts_host

    def steps_left(self) -> int | None:
        """Steps after this one in the scheduler's schedule (None without a scheduler)."""
        ts = self._host_schedule()
        return len(ts) - 1 - self.step if ts else None

    def _next_t(self) -> float | None:
        """The next step's timestep, from the scheduler's schedule when one was given (else unknown)."""
        ts = self._host_schedule()
        return ts[self.step + 1] if ts and self.step + 1 < len(ts) else None

    def _policy_probs(self, H: list, snr: float | None) -> list[float]:
        from .policy import policy_features

        f = policy_features(H, snr, host_float(self.x_norm), self.s, self.num_layers, host_float(self.x_change),
                            self.rule.streaks)  # (L, len(FEATURES))
        with torch.no_grad():
            return self.policy(f).tolist()

    @property
    def cfg_share_now(self) -> bool:
        c = self.config
        return c.cfg_share_from is not None and c.enabled and self.step > 0 and self.s >= c.cfg_share_from

    # ---- cache ---------------------------------------------------------------------------
    def try_reuse(self, i: int, kinds: tuple[str, ...], sig: tuple, h: torch.Tensor | None = None) -> bool:
        """Called by layer i's hook before it runs: True if it may serve its cached `kinds`. Records the row.

        `h` is the layer's input; with the change gate on, a plan that only awaits the change is decided here.
        """
        reuse, reason = self.plan[i]
        c = self.config.decide
        measured = False
        if c.kind == "change" and h is not None:
            if c.scope == "stack":  # the first layer's change, measured every step, decides for all
                if i == 0:
                    self.step_change = self._input_change(0, h)
                    measured = c.accumulate
                change = self.step_change
            elif reason == "change" or c.accumulate:  # an accumulated change is summed over every step
                change, measured = self._input_change(i, h), c.accumulate
            else:
                change = None
            self.change[i] = change
            if reason == "change":
                self.plan[i] = reuse, reason = self._replan(i, change)
        if reuse:
            for kind in kinds:
                status = self.cache.status((i, kind), sig)
                if status != "ok":
                    reuse, reason = False, status
                    break
        if measured:  # a compute starts a new sum; a reuse carries it on
            self.accumulated[i] = self.change[i] if reuse and self.change[i] is not None else 0.0
        self._record(i, reuse, reason)
        return reuse

    def follow(self, i: int) -> bool:
        """"stack" granularity: layer i > 0 does what layer 0 decided this step (its row records that)."""
        reuse, reason = self.first
        self._record(i, reuse, reason)
        return reuse

    def _input_change(self, i: int, h: torch.Tensor) -> float | None:
        """||h - h_c||_1 / ||h_c||_1 against layer i's input at its last compute (None before one): one host read.

        With `decide.accumulate`: the accumulated change so far plus ||h - h_p||_1 / ||h_p||_1, h_p the input at
        the step before (None on the first step)."""
        if self.config.decide.accumulate:
            h_p, self.previous[i] = self.previous[i], h.detach()
            if h_p is None or h_p.shape != h.shape:
                return None
            return self.accumulated[i] + float((h - h_p).abs().mean() / h_p.abs().mean().clamp_min(1e-12))
        h_c = self.inputs[i]
        if h_c is None or h_c.shape != h.shape:
            return None
        return float((h - h_c).abs().mean() / h_c.abs().mean().clamp_min(1e-12))

    def _replan(self, i: int, change: float | None) -> tuple[bool, str]:
        """Layer i's plan again, with the change of its input known (the same rule, `decide`)."""
        return self.rule.decide_layer(self.config, self.s, i, host_float(self.H[i]), host_float(self.snr), change,
                                      self.prompt_length, self.steps_left())

    def computed_input(self, i: int, h: torch.Tensor) -> None:
        """Layer i computed from input h: the change gate measures later inputs against it."""
        if self.config.kind == "change":
            self.inputs[i] = h.detach()

    def cached(self, i: int, kind: str) -> torch.Tensor:
        """Layer i's cached `kind`, forecast to this step when `serve.order` > 0."""
        w = self.config.serve.weights
        row = w[self.step] if w is not None and 0 <= self.step < len(w) else None
        return self.cache.get((i, kind), self._abscissa() if self.config.serve.order else None, row)

    def _abscissa(self) -> float:
        """Where this step lies for forecasting: its index, or its timestep (`serve.abscissa`)."""
        return float(self.t) if self.config.serve.abscissa == "t" and self.t is not None else float(self.step)

    def store(self, i: int, kind: str, x) -> None:
        """Keep layer i's fresh output for later steps; where no later step can use it, drop the old entry.

        `x` may be a zero-argument callable (e.g. a residual to subtract), evaluated only when it is kept.
        """
        c = self.config
        if c.enabled and not self.keep[i]:
            self.cache.drop((i, kind))
        elif c.enabled:
            x = x() if callable(x) else x
            mode = storage_mode(c.store.mode, kind)
            calib = self.calibration[(i, kind)] if mode == "csb" else None
            self.cache.store((i, kind), x, mode, calib, c.store.dynamic_scale, at=self._abscissa(),
                             depth=c.history)
            self.peak_cache_bytes = max(self.peak_cache_bytes, self.cache.nbytes)

    def _record(self, i: int, reuse: bool, reason: str) -> None:
        if i == 0:
            self.first = reuse, reason
        self.rule.record(i, reuse)
        (self.reused if reuse else self.computed)[i] += 1
        self.rows.append((self.step, self.t, i, self.H[i], self.snr, self.x_norm, self.x_change, reuse, reason,
                          self.change[i]))

    # ---- statistics ----------------------------------------------------------------------
    def wants_entropy(self) -> bool:
        """H_t is measured for the trace (`collect_stats`) or where a rule reads it (the entropy gate, a policy that
        reads H_t)."""
        c = self.config
        reads = self.policy is not None and "H_t" in self.policy.features
        return c.collect_stats or c.kind == "gates" and c.decide.tau is not None or reads

    def set_entropy(self, i: int, H_t: torch.Tensor) -> None:
        self.H[i] = HostValue(H_t)

    def end_step(self, x_t: torch.Tensor, model_output: torch.Tensor) -> None:
        """After the forward: SNR_t from the predicted x0, ||x_t|| and its relative L1 change since the last step,
        read by the next step."""
        c = self.config
        snr_gate = c.kind == "gates" and c.decide.snr_lo is not None
        if not (c.collect_stats or snr_gate or c.kind == "policy") or self.t is None:
            return  # SNR_t and ||x_t|| are for the trace, the SNR gate and the policy only
        self.x_norm = HostValue(latent_norm(x_t))
        if self.x_last is not None and self.x_last.shape == x_t.shape:
            self.x_change = HostValue(latent_change(x_t, self.x_last))
        self.x_last = x_t.detach().clone()
        c = x_t.shape[1]
        out = model_output[:, :c]  # learned-sigma models emit (eps, var)
        x0 = step_x0(self.scheduler, x_t, out, self.t, self.step, self.num_train_timesteps)  # per prediction type
        if x0 is None:
            return
        self.snr = HostValue(latent_snr(x0, x_t))

    def trace(self) -> list[dict]:
        """One row per (step, layer): t, H_t, SNR_t, ||x_t|| (the values the decision saw), reuse, reason."""
        return [dict(zip(TRACE_FIELDS, (s, t, i, host_float(h), host_float(r), host_float(n), host_float(x), u, why,
                                        d))) for (s, t, i, h, r, n, x, u, why, d) in self.rows]

    def refusal(self) -> str | None:
        """Why this run reused nothing, in one sentence naming the rule that refused most and what it saw (the
        observed H_t or SNR_t range against its threshold); None if it reused, was off, or ran no step."""
        if not self.config.enabled or not self.rows or sum(self.reused):
            return None
        reasons = [r[_REASON] for r in self.rows if r[_REASON] not in ("warmup", "missing")]
        if not reasons:
            return f"every step fell in warmup={self.config.warmup} (or had nothing cached): no step could reuse"
        why = max(set(reasons), key=reasons.count)
        c = self.config.decide
        if why == "entropy":
            H = [host_float(r[_H]) for r in self.rows if r[_REASON] == "entropy" and r[_H] is not None]
            H = [h for h in H if h == h]
            seen = f"H_t in [{min(H):.2f}, {max(H):.2f}]" if H else "H_t never measured"
            tau = tau_for_prompt(c.tau, self.prompt_length, c.tau_slope, c.p_ref)
            at = f"tau(p={self.prompt_length})={tau:.3g}" if tau != c.tau else f"tau={c.tau:g}"
            return f"the entropy gate refused every reuse: {seen}, not below {at}"
        if why == "snr":
            snr = [host_float(r[_SNR]) for r in self.rows if r[_REASON] == "snr" and r[_SNR] is not None]
            snr = [v for v in snr if v == v]
            seen = f"SNR_t in [{min(snr):.3g}, {max(snr):.3g}]" if snr else "SNR_t never measured"
            return f"the SNR gate refused every reuse: {seen}, outside [snr_lo={c.snr_lo:g}, snr_hi={c.snr_hi:g}]"
        return f"the {why!r} rule refused every reuse after warmup ({reasons.count(why)} of {len(reasons)} decisions)"

    def stats(self) -> dict:
        total = sum(self.reused) + sum(self.computed)
        return {
            "reuse_fraction": sum(self.reused) / total if total else 0.0,
            "per_layer_reuse": list(self.reused),
            "per_layer_compute": list(self.computed),
            "steps": self.step + 1,
            "layers": self.num_layers,
            "cache_bytes": self.cache.nbytes,
            "peak_cache_bytes": self.peak_cache_bytes,
            "cache_entries": len(self.cache),
            "refused": self.cache.refused,
            "invalidated": self.cache.invalidated,
            "nonfinite": self.cache.nonfinite,
            "cfg_shared": self.cfg_shared,
            "decision_seconds": self.decision_seconds,
        }

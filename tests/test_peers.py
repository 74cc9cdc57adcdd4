import pytest
import torch

from dqar_lib import sample, tiny_dit
from dqar_lib.evaluation.methods import run_method
from dqar_lib.evaluation.peers import PEERS, UNRUNNABLE, flow_sigma, get_peer, peer_status

LABELS, STEPS = [1, 2], 8  # guidance 1.5 (tiny_dit's default): one CFG batch of 4 per step
# Settings that make each method skip on the random tiny DiT in 8 steps (fbc/seacache defaults never fire there).
SKIPPING = {"pab": {}, "fbc": dict(threshold=0.5), "taylorseer": {}, "seacache": dict(threshold=5.0), "magcache": {},
            "cachedit": dict(residual_diff_threshold=0.5, max_warmup_steps=2)}
SKIPS_BLOCKS = {"fbc", "seacache", "magcache", "cachedit"}  # skip whole blocks; pab and taylorseer skip attention only


class Counter:
    """Forward calls of each self-attention's to_q (attention computed) and each block's ff (block computed)."""

    def __init__(self, model):
        self.n = {"attn": 0, "ff": 0, "model": 0}
        mods = [(m, "attn") for n, m in model.named_modules() if n.endswith("attn1.to_q")]
        mods += [(m, "ff") for n, m in model.named_modules() if n.endswith(".ff")] + [(model, "model")]
        self.handles = [m.register_forward_hook(lambda *_, k=k: self.n.__setitem__(k, self.n[k] + 1)) for m, k in mods]

    def __enter__(self):
        return self.n

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def run(model, peer=None):
    kw = dict(num_steps=STEPS, progress=False)
    return (run_method(model, peer, LABELS, **kw) if peer else sample(model, LABELS, **kw)).latents


def clean(model) -> bool:
    """No diffusers registry and no instance-level forward left on any module."""
    return not any(hasattr(m, "_diffusers_hook") or "forward" in vars(m) for m in model.modules())


def test_every_skipping_setting_is_listed():
    assert set(SKIPPING) == set(PEERS)


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_peer_skips_work_and_resets(name):
    """Attention (and, for block caches, feed-forward) calls are skipped; a second run repeats the first.
    Attach, removal and bit-identity are tests/test_contract.py's."""
    model = tiny_dit()
    with Counter(model) as full:
        run(model)
    peer = get_peer(name, **SKIPPING[name])
    first = run(model, peer)  # magcache calibrates here, once
    with Counter(model) as cut:
        second = run(model, peer)
    assert torch.equal(first, second), "state leaked from one run into the next"
    assert cut["model"] == full["model"] == STEPS
    assert cut["attn"] < full["attn"] == STEPS * len(model.transformer_blocks)
    if name in SKIPS_BLOCKS:
        assert cut["ff"] < full["ff"]
    else:
        assert cut["ff"] == full["ff"]


@pytest.mark.parametrize("name", sorted(SKIPPING))
def test_first_step_resets_state_when_applied_once(name):
    """Applied once, sampled twice (as a benchmark does): the second run must not see the first's state."""
    model, peer = tiny_dit(), get_peer(name, **SKIPPING[name])
    peer.prepare(model, LABELS, num_steps=STEPS - 1)
    peer.apply(model)
    try:
        outs = [sample(model, LABELS, num_steps=STEPS - 1, progress=False, step_callback=peer.step_callback).latents
                for _ in range(2)]
    finally:
        peer.remove(model)
    assert torch.equal(*outs)


def test_failing_attach_is_undone():
    model, peer = tiny_dit(), get_peer("pab")
    attach = peer.attach
    peer.attach = lambda m, config: (attach(m, config), 1 / 0)
    with pytest.raises(ZeroDivisionError):
        peer.apply(model)
    assert clean(model)


def test_magcache_calibrates_once_per_setting():
    model, peer = tiny_dit(), get_peer("magcache")
    with Counter(model) as n:
        run(model, peer)
    assert n["model"] == 2 * STEPS  # calibration run + the run
    assert len(peer.mag_ratios) == STEPS and peer.mag_ratios[0] == 1.0
    with Counter(model) as n:
        run(model, peer)
    assert n["model"] == STEPS


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_failed_run_still_removes_the_hooks():
    model = tiny_dit()
    ref = run(model)
    with pytest.raises(RuntimeError):
        run(model, UNRUNNABLE["fastercache"]())
    assert clean(model) and torch.equal(run(model), ref)


def test_unknown_names_list_the_known_peers():
    with pytest.raises(ValueError, match="known peers.*pab"):
        get_peer("teacache")
    with pytest.raises(ValueError, match="unknown DQAR preset 'pab'.*get_peer"):  # run_method takes peer objects
        run_method(tiny_dit(), "pab", LABELS, num_steps=2)


def test_flow_sigma_is_in_unit_interval_and_increasing():
    s = [flow_sigma(t) for t in (0, 250, 500, 999)]
    assert all(0 < a < b < 1 for a, b in zip(s, s[1:]))


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_peer_status_runs_peers_and_gives_reasons():
    status = peer_status()
    assert set(status) == set(PEERS) | set(UNRUNNABLE)
    assert all(status[name] == "ok" for name in PEERS)
    assert status["fastercache"].startswith("RuntimeError: The size of tensor a")

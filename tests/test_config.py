import glob
import json
import math
import re

import pytest

from dqar_lib import PRESETS, DQARConfig
from dqar_lib.method.config import (
    Always,
    Change,
    Gates,
    LayerSchedule,
    Off,
    Period,
    Plan,
    Policy,
    Profile,
    Serve,
    Store,
    parse_overrides,
)
from dqar_lib.method.legacy import FLAT_DEFAULTS, from_flat, to_flat


def test_presets_exist_and_validate():
    for name in ("off", "always", "static", "entropy", "snr", "gates", "forecast", "dqar"):
        assert name in PRESETS
        DQARConfig.preset(name)
    assert DQARConfig.preset("off").enabled is False
    assert DQARConfig.preset("dqar") == DQARConfig()  # the field defaults are the default preset
    assert DQARConfig(granularity="stack").kind == "profile"  # no schedule by default, so "stack" builds


def test_each_preset_names_what_decides():
    kinds = {name: cfg.kind for name, cfg in PRESETS.items()}
    assert kinds == {"off": "off", "always": "always", "static": "period", "entropy": "gates", "snr": "gates",
                     "gates": "gates", "dqar_csb": "gates", "forecast": "profile", "dqar": "profile",
                     "policy": "policy", "dqar_policy": "policy"}


def test_the_dqar_preset_is_a_forecast_of_the_whole_stack():
    """"dqar", what apply_dqar(model) runs: it forecasts (order 2), reuses the stack, and runs no gate."""
    d = DQARConfig.preset("dqar")
    assert d.serve.order == 2 and d.granularity == "stack" and d.store.mode == "delta" and d.decide.streak_profile
    assert isinstance(d.decide, Profile) and d.decide.schedule is None
    assert d.replace(forecast_order=1, warmup=0.2, end_computes=2, streak_profile=None, max_reuse_streak=1,
                     max_reuse_streak_end=3) == DQARConfig.preset("forecast")


def test_unknown_preset_names_it_and_lists_known():
    with pytest.raises(ValueError, match=r"'fastest'.*off.*dqar"):
        DQARConfig.preset("fastest")


def test_preset_overrides_by_short_and_dotted_name():
    assert DQARConfig.preset("gates", tau=0.5).decide.tau == 0.5
    assert DQARConfig.preset("gates").replace(**{"decide.tau": 0.5}) == DQARConfig.preset("gates", tau=0.5)
    assert DQARConfig.preset("gates", schedule_depth_start=0.3).decide.schedule == LayerSchedule(0.3, 1.0)
    assert DQARConfig.preset("dqar", cache_mode="fp16").store == Store(mode="fp16")
    assert DQARConfig.preset("gates", cfg_share=True, cfg_share_start=0.4).cfg_share_from == 0.4


def test_a_field_the_decision_does_not_read_is_refused():
    """No combination the rule would silently ignore can be built: the profile reads no tau, a plan no warmup,
    a streak profile no linear cap end, a non-csb cache no calibration."""
    for name, bad in [("dqar", dict(tau=0.5)), ("dqar", dict(policy_threshold=0.2)), ("always", dict(warmup=0.3)),
                      ("dqar", dict(max_reuse_streak_end=4)), ("gates", dict(cache_calibration="x.pt")),
                      ("static", dict(snr_lo=0.1)), ("gates", dict(cfg_share_start=0.3))]:
        with pytest.raises(ValueError, match=re.escape(next(iter(bad)))):
            DQARConfig.preset(name, **bad)
    with pytest.raises(ValueError, match="names no field of Profile"):
        DQARConfig().replace(**{"decide.tau": 0.5})


def test_a_short_name_switches_what_decides_and_carries_what_is_shared():
    plan = ((False, True),) * 3
    p = DQARConfig.preset("dqar", static_plan=plan)
    assert p.decide == Plan(plan) and p.serve == DQARConfig().serve
    c = DQARConfig.preset("dqar", use_change_gate=True, change_scope="stack", delta=0.2)
    assert isinstance(c.decide, Change) and c.decide.streak_profile == DQARConfig().decide.streak_profile
    assert c.decide.end_computes == 1 and c.decide.scope == "stack"
    assert DQARConfig.preset("gates", use_entropy_gate=False, use_snr_gate=False).decide == \
        Profile(warmup=0.2, schedule=LayerSchedule())
    assert DQARConfig.preset("gates", enabled=False).decide == Off()


@pytest.mark.parametrize("make,message", [
    (lambda: Gates(tau=-0.1), "Gates.tau=-0.1 is invalid"), (lambda: Gates(tau=1.5), "Gates.tau=1.5 is invalid"),
    (lambda: Profile(warmup=2.0), "Profile.warmup=2.0 is invalid"),
    (lambda: DQARConfig(granularity="block?"), "DQARConfig.granularity='block?' is invalid"),
    (lambda: Store(mode="int4"), "Store.mode='int4' is invalid"),
    (lambda: Profile(max_streak=-1), "Profile.max_streak=-1 is invalid"),
    (lambda: Gates(snr_lo=-1.0), "Gates.snr_lo=-1.0 is invalid"),
    (lambda: Store(budget_bytes=-5), "Store.budget_bytes=-5 is invalid"),
    (lambda: DQARConfig(entropy_rows=0), "DQARConfig.entropy_rows=0 is invalid"),
    (lambda: DQARConfig(cfg_layout="middle"), "DQARConfig.cfg_layout='middle' is invalid"),
    (lambda: Gates(tau_slope=math.inf), "Gates.tau_slope=inf is invalid"),
    (lambda: Gates(snr_hi=math.nan), "Gates.snr_hi=nan is invalid"),
    (lambda: Gates(snr_lo=math.nan), "Gates.snr_lo=nan is invalid"),
    (lambda: Gates(snr_hi=-1.0), "Gates.snr_hi=-1.0 is invalid"),
    (lambda: Serve(order=3), "Serve.order=3 is invalid"), (lambda: Serve(abscissa="x"), "Serve.abscissa='x'"),
    (lambda: Period(period=0), "Period.period=0 is invalid"), (lambda: Change(scope="all"), "Change.scope='all'"),
    (lambda: Plan(((True,), (True, False))), "rows have different lengths"),
    (lambda: Gates(tau=None, snr_lo=None), "gate nothing"),
    (lambda: Profile(streak_profile=((0.5, 1), (0.2, 2))), "Profile.streak_profile"),
])
def test_bad_values_name_field_and_value(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_empty_snr_range():
    with pytest.raises(ValueError, match="snr_lo=5.0 > snr_hi=1.0"):
        Gates(snr_lo=5.0, snr_hi=1.0)


def test_cross_group_rules():
    with pytest.raises(ValueError, match="cfg_share_from"):
        DQARConfig(cfg_share_from=0.5, granularity="stack")
    with pytest.raises(ValueError, match="schedule"):
        DQARConfig(decide=Gates(schedule=LayerSchedule()), granularity="stack")
    with pytest.raises(ValueError, match="not K/V"):
        DQARConfig(granularity="kv")  # the default serve forecasts
    with pytest.raises(ValueError, match="Serve.weights"):
        Serve(order=0, weights=((1.0,),))
    with pytest.raises(ValueError, match="needs a calibration"):
        Store(mode="csb")


def test_policy_needs_a_file():
    with pytest.raises(ValueError, match="Policy.path"):
        Policy()
    with pytest.raises(ValueError, match="Policy.path"):
        DQARConfig.preset("dqar", use_policy=True)


def test_every_preset_round_trips_through_its_dict_and_the_flat_form():
    for name, cfg in PRESETS.items():
        assert DQARConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg, name
        assert DQARConfig(**from_flat(to_flat(cfg))) == cfg, name
        assert cfg.to_dict()["decide"]["kind"] == cfg.kind


def test_old_flat_manifests_still_load():
    """Every config dict the flat version wrote into data/ loads, and decides as the old rule's precedence says."""
    found = []

    def walk(o):
        if isinstance(o, dict):
            if "use_entropy_gate" in o and "granularity" in o:
                found.append(DQARConfig.from_dict(o))
            else:
                for v in o.values():
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for path in glob.glob("data/**/*.json", recursive=True):
        with open(path) as f:
            walk(json.load(f))
    assert len(found) >= 10 and {c.kind for c in found} >= {"profile", "plan"}
    old_gates = DQARConfig.from_dict(dict(FLAT_DEFAULTS))
    assert old_gates == PRESETS["gates"].replace(collect_stats=True)
    assert DQARConfig.from_dict({"always_reuse": True, "warmup": 0.0}).decide == Always()
    with pytest.raises(ValueError, match="unknown DQARConfig field"):
        DQARConfig.from_dict({"tau_typo": 1})


def test_parse_overrides_reads_short_and_dotted_names():
    got = parse_overrides(["tau=0.9", "decide.snr_hi=inf", "store.mode=fp16", "serve.order=1", "cfg_share=true",
                           "decide.schedule.depth_start=0.3", "max_reuse_streak_end=none"])
    assert got == {"tau": 0.9, "decide.snr_hi": math.inf, "store.mode": "fp16", "serve.order": 1, "cfg_share": True,
                   "decide.schedule.depth_start": 0.3, "max_reuse_streak_end": None}
    with pytest.raises(ValueError, match="names no DQARConfig field"):
        parse_overrides(["decide.nothing=1"])


def test_presets_are_pure_and_the_default_cache_mode_is_pinned(monkeypatch):
    """A preset reads no file (a notebook run cannot change the library's default), and "gates" caches in
    int8_channel, the mode notebooks/04_quantization measures as recommended (it asserts the two agree)."""
    import builtins

    def no_open(*a, **k):
        raise AssertionError(f"a preset opened a file: {a[:1]}")

    monkeypatch.setattr(builtins, "open", no_open)
    monkeypatch.setattr("pathlib.Path.is_file", lambda self: (_ for _ in ()).throw(AssertionError(str(self))))
    for name in PRESETS:
        assert DQARConfig.preset(name) == DQARConfig.preset(name)
    assert DQARConfig.preset("gates").store.mode == "int8_channel"
    assert DQARConfig.preset("dqar_csb").store.mode == "csb"


def test_the_cli_set_takes_short_and_dotted_names():
    from dqar_lib.benchmark import base_config, parser

    args = ["--model", "x", "--output-dir", "o", "--preset", "gates", "--set", "decide.tau=0.9", "--set", "snr_lo=0.1",
            "--set", "store.mode=fp16", "--set", "serve.order=1"]
    name, cfg = base_config(parser().parse_args(args))
    assert (cfg.decide.tau, cfg.decide.snr_lo, cfg.store.mode, cfg.serve.order) == (0.9, 0.1, "fp16", 1)
    assert name.startswith("dqar (gates) + decide.tau=0.9")

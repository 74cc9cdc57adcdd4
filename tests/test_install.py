"""`pip install` gives a package that works outside the checkout, and `import dqar_lib` changes nothing.

The wheel is built from a copy of the working tree (what `pip install git+URL` does with a clone), installed with
`--no-deps` into a fresh virtual environment that sees this environment's packages (torch, diffusers ...) through a
.pth file, and run from an empty folder with DQAR_DATA unset: the package, the embedded model, its classifier and
every preset's files must come from the new environment.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

import dqar_lib

REPO = Path(__file__).resolve().parents[1]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "_build", ".cache", "runs", "__pycache__",
                              ".*_cache", "notebooks", "book", "cifar10", "results", "traces")

NO_SIDE_EFFECTS = textwrap.dedent("""
    import json, logging, sys
    spawned = []
    sys.addaudithook(lambda event, args: spawned.append(event) if event in (
        "subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.fork", "os.spawn") else None)
    for name, level in (("", logging.INFO), ("torchao", logging.DEBUG), ("torch.utils._pytree", logging.INFO),
                        ("diffusers.quantizers.torchao.torchao_quantizer", logging.CRITICAL), ("mine", 15)):
        logging.getLogger(name).setLevel(level)
    def levels():
        return {name: lg.level for name, lg in [("", logging.root), *logging.root.manager.loggerDict.items()]
                if isinstance(lg, logging.Logger)}
    before, handlers = levels(), list(logging.root.handlers)
    import dqar_lib
    after = levels()
    print(json.dumps(dict(spawned=spawned, changed={n: [v, after[n]] for n, v in before.items() if after[n] != v},
                          handlers=logging.root.handlers == handlers, disabled=logging.root.manager.disable)))
""")


def env_without_data():
    env = {k: v for k, v in os.environ.items() if k not in ("DQAR_DATA", "PYTHONPATH")}
    return env | {"HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}  # tiny tensors: one thread


def test_import_starts_no_process_and_leaves_logging_as_it_was(tmp_path):
    out = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], cwd=tmp_path, capture_output=True, text=True,
                         env=env_without_data() | {"PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r == dict(spawned=[], changed={}, handlers=True, disabled=0), r


INSTALLED = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import dqar_lib as dq
    from dqar_lib.evaluation.classifier import class_accuracy, load_classifier
    from dqar_lib.method import files
    from dqar_lib.models.prompts import read_prompts

    prefix = Path(sys.prefix).resolve()
    shipped = {n: str(files.data_file(getattr(files, n)).resolve()) for n in (
        "DEFAULT_MODEL", "DEFAULT_CLASSIFIER", "DEFAULT_POLICY", "DEFAULT_FORECAST_POLICY",
        "DEFAULT_CACHE_CALIBRATION", "PROMPTS")}
    model = dq.load_model()
    stats = {}
    for name in dq.PRESETS:  # every preset, those that load a shipped file among them
        res = dq.sample(model, [0, 1], num_steps=6, dqar=name, progress=False)
        assert res.images.shape == (2, 3, 32, 32) and bool(res.images.isfinite().all()), name
        stats[name] = res.stats.get("reuse_fraction")
    acc = class_accuracy(res.images, [0, 1], load_classifier())
    print(json.dumps(dict(file=str(Path(dq.__file__).resolve()), prefix=str(prefix), shipped=shipped,
                          stats=stats, accuracy=acc, prompts=len(read_prompts()))))
""")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=SKIP)  # a clean tree: an in-tree build/ would carry deleted modules along
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (path,) = (tmp / "dist").glob("dqar_lib-*.whl")
    return path


def test_the_wheel_holds_every_package_and_only_the_shipped_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "dqar_lib").rglob("__init__.py")}
    assert {f"{p}/__init__.py" for p in packages} <= names
    data = {n.removeprefix("dqar_lib/_data/") for n in names if n.startswith("dqar_lib/_data/")}
    assert data == {"models/cifar10-dit/config.json", "models/cifar10-dit/dqar_model.json",
                    "models/cifar10-dit/model_card.json", "models/cifar10-dit/diffusion_pytorch_model.safetensors",
                    "models/cifar10-dit/scheduler/scheduler_config.json", "models/cifar10-classifier/classifier.pt",
                    "policy/policy.pt", "policy/forecast_policy.pt", "calibration/cache_calibration.pt",
                    "prompts/prompts.txt"}
    assert wheel.stat().st_size < 20 * 2**20


def test_the_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this environment's packages (torch, diffusers, pip ...), after the new one's own; plain paths, so this
    # environment's .pth files (an editable dqar_lib among them) are not run
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "project_env.pth").write_text("\n".join(ours) + "\n")
    env = env_without_data()
    out = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run([python, "-c", INSTALLED], capture_output=True, text=True, env=env, cwd=run, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    prefix = Path(r["prefix"])
    assert Path(r["file"]).is_relative_to(prefix), r["file"]
    for name, path in r["shipped"].items():
        assert Path(path).is_relative_to(prefix / "lib"), (name, path)
    assert list(r["stats"]) == list(dqar_lib.PRESETS)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["prompts"] > 0

"""The package's files, found: every `dqar_lib*` package, and `dqar_lib._data` mapped onto the checkout's `data/`
so the wheel ships the files the library loads (the embedded model and classifier, the policies, the cache
calibration, the prompt set) without moving data/ out of the repository's top level. The rest of the metadata is
in pyproject.toml; this file exists because pyproject's `packages.find` cannot add a package that lives outside
its package's folder. What the library does with `_data`: dqar_lib.method.files (the lookup)."""

from setuptools import find_packages, setup

SHIPPED = [  # data-relative globs; results (JSON), traces and the CIFAR-10 archive stay in the repository
    "models/cifar10-dit/config.json",
    "models/cifar10-dit/dqar_model.json",
    "models/cifar10-dit/model_card.json",
    "models/cifar10-dit/*.safetensors",
    "models/cifar10-dit/scheduler/scheduler_config.json",
    "models/cifar10-classifier/classifier.pt",
    "policy/policy.pt",
    "policy/forecast_policy.pt",
    "calibration/cache_calibration.pt",
    "prompts/prompts.txt",
]

setup(
    packages=find_packages(include=["dqar_lib", "dqar_lib.*"]) + ["dqar_lib._data"],
    package_dir={"dqar_lib._data": "data"},
    package_data={"dqar_lib._data": SHIPPED},
    include_package_data=False,  # only SHIPPED from data/, whatever a plugin finds under version control
)

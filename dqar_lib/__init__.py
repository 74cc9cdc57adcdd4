"""DQAR: dynamic, quantization-aware attention reuse for Diffusion Transformers.

    from dqar_lib import DQARConfig, apply_dqar, remove_dqar, sample, load_model
    with dqar_lib.dqar(pipe, "dqar"): images = pipe(...).images      # any DiT / PixArt pipeline
    config = dqar_lib.calibrate(pipe, budget=0.3)                     # the gates fitted to a new model
    config, fit = dqar_lib.calibrate_plan(model, [1, 3], budget=0.58)  # the fitted whole-stack plan
"""

import logging as _logging

# diffusers imports torchao when it is installed; torchao then reports, at warning level, the compiled kernels
# this torch build cannot load (it falls back to its Python paths) and torch deprecation notes. Quiet them
# while the library imports, so they do not fill every notebook's first output; the levels are restored after.
_NOISY = [_logging.getLogger(n) for n in ("torchao", "torch.utils._pytree",
                                         "diffusers.quantizers.torchao.torchao_quantizer")]
_levels = [lg.level for lg in _NOISY]
for _lg in _NOISY:
    _lg.setLevel(_logging.ERROR)
try:
    from .fitting.calibrate import calibrate, load_calibration, save_calibration
    from .fitting.plan_fit import calibrate_plan, calibrate_plans
    from .method.config import PRESETS, DQARConfig
    from .method.controller import DQARController
    from .method.hooks import apply_dqar, dqar, get_controller, remove_dqar
    from .models.pipelines import load_pipeline
    from .models.sampling import SampleResult, default_guidance, sample
    from .models.zoo import load_model, tiny_dit, tiny_pixart
finally:
    for _lg, _lv in zip(_NOISY, _levels):
        _lg.setLevel(_lv)

__all__ = ["DQARConfig", "PRESETS", "DQARController", "apply_dqar", "remove_dqar", "get_controller", "sample",
           "SampleResult", "default_guidance", "load_model", "tiny_dit", "tiny_pixart", "dqar", "calibrate",
           "save_calibration", "load_calibration", "load_pipeline", "calibrate_plan", "calibrate_plans"]
__version__ = "0.1.0"

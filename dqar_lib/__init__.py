"""DQAR: dynamic, quantization-aware attention reuse for Diffusion Transformers.

    from dqar_lib import DQARConfig, apply_dqar, remove_dqar, sample, load_model
"""

from .config import PRESETS, DQARConfig
from .controller import DQARController
from .hooks import apply_dqar, get_controller, remove_dqar
from .models import load_model, tiny_dit, tiny_pixart
from .sampling import SampleResult, sample

__all__ = ["DQARConfig", "PRESETS", "DQARController", "apply_dqar", "remove_dqar", "get_controller", "sample",
           "SampleResult", "load_model", "tiny_dit", "tiny_pixart"]
__version__ = "0.1.0"

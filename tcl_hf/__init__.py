"""tcl_hf: Twin Contrastive Learning with noisy labels on the Hugging Face stack."""
from . import models  # noqa: F401  (registers the project's timm architectures on import)
from . import hub  # noqa: F401  (registers tcl_classifier, the exported classifier, with timm)
from .config import Config, load_config
from .errors import ConfigError, DataError, TCLError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "TCLError", "Trainer", "load_config", "__version__"]


def __getattr__(name):
    # The trainer pulls in accelerate and datasets; load it only when asked for.
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(name)

"""tcl_hf: Twin Contrastive Learning with noisy labels on the Hugging Face stack.

Importing the package is light (no torch, timm, huggingface_hub, wandb or matplotlib): the project's timm
architectures (``preact_resnet18_cifar``, ``preact_resnet_mini``, ``preact_resnet18_textbook`` and the
exported ``tcl_classifier``) are registered the moment timm is imported, or at once if it already is, so
``import tcl_hf, timm; timm.create_model("local-dir:<export>", pretrained=True)`` works in any order.
"""
import wrapt

from .config import Config, load_config
from .errors import ConfigError, DataError, TCLError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "TCLError", "Trainer", "load_config", "__version__"]


def _register_architectures(timm_module) -> None:
    from . import models  # noqa: F401  (its @register_model decorators do the registering)


wrapt.register_post_import_hook(_register_architectures, "timm")


def __getattr__(name):
    # The trainer pulls in torch, accelerate and datasets; load it only when asked for.
    if name == "Trainer":
        from .trainer import Trainer

        return Trainer
    raise AttributeError(name)

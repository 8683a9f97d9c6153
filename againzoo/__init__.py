"""againzoo: AGAIN (CVPR 2023) adversarial training on any timm backbone, and a robust model zoo."""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the CIFAR backbones in timm)
from .adapter import AgainModel
from .errors import CheckpointError, ConfigError, DataError, ShapeError, UsageError, UserError
from .factory import create_model, list_models
from .hub import from_pretrained, push, save_pretrained
from .losses import joint_loss

__all__ = ["AgainModel", "CheckpointError", "ConfigError", "DataError", "ShapeError", "UsageError", "UserError",
           "__version__", "create_model", "from_pretrained", "joint_loss", "list_models", "push",
           "save_pretrained"]

"""againzoo: AGAIN (CVPR 2023) adversarial training on any timm backbone, and a robust model zoo."""

from .version import __version__

from . import models  # noqa: F401  (registers the CIFAR backbones in timm)
from .adapter import AgainModel
from .errors import CheckpointError, ConfigError, DataError, ShapeError, UsageError, UserError
from .checkpoint import save_pretrained
from .factory import list_models
from .hub import push
from .pretrained import create_model, from_pretrained
from . import timm_entries  # noqa: F401,E402  (registers the again_* names in timm)
from .losses import joint_loss

__all__ = ["AgainModel", "CheckpointError", "ConfigError", "DataError", "ShapeError", "UsageError", "UserError",
           "__version__", "create_model", "from_pretrained", "joint_loss", "list_models", "push",
           "save_pretrained"]

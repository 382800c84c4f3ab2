"""The model zoo: every family registers itself on import."""
from . import resnet, resnet_cifar, vgg, vit  # noqa: F401  (registration)
from .layers import Block, CoderBank, ConvNet, ConvNormAct, ProjectionCoder, TiedCoder
from .registry import KINDS, PnnhNet, check_options, create_model, list_models, model_family, model_info, model_options

__all__ = ["KINDS", "PnnhNet", "Block", "CoderBank", "ConvNet", "ConvNormAct", "ProjectionCoder", "TiedCoder",
           "check_options", "create_model", "list_models", "model_family", "model_info", "model_options"]

"""The model zoo: every family and every skip-free kind registers itself on import."""
from . import dirac, looks_linear, repvgg, resnet, resnet_cifar, tat, vgg, vit  # noqa: F401  (registration)
from .layers import Block, CoderBank, ConvNet, ConvNormAct, ProjectionCoder, TiedCoder
from .registry import (
                       BASE_KINDS,
                       KINDS,
                       SKIP_FREE_KINDS,
                       PnnhNet,
                       check_options,
                       create_model,
                       list_models,
                       model_family,
                       model_info,
                       model_options,
)

__all__ = ["BASE_KINDS", "KINDS", "SKIP_FREE_KINDS", "PnnhNet", "Block", "CoderBank", "ConvNet", "ConvNormAct",
           "ProjectionCoder", "TiedCoder", "check_options", "create_model", "list_models", "model_family",
           "model_info", "model_options"]

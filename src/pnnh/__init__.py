"""pnnh: residual, plain and PNNH networks side by side (the Plain Neural Net Hypothesis, arXiv 2402.08645)."""
from .convert import to_plain
from .errors import PnnhError
from .hub import create_model, load_model
from .models import KINDS, list_models
from .resnet_import import from_resnet

__version__ = "0.1.0"
__all__ = ["KINDS", "PnnhError", "create_model", "from_resnet", "list_models", "load_model", "to_plain", "__version__"]

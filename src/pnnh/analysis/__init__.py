"""Analysis: the dissipating-inputs probe, DISTS, and Monte Carlo checks of the paper's theorems."""
from .dists import DISTS
from .metrics import effective_rank, linear_cka, ridge_r2, survival
from .probe import METRICS, layer_responses, probe
from .theory import theory

__all__ = ["DISTS", "METRICS", "effective_rank", "layer_responses", "linear_cka", "probe", "ridge_r2",
           "survival", "theory"]

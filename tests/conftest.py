"""Shared fixtures. Real data lives beside the project in ../shared/data (override: PNNH_DATA_DIR)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("PNNH_DATA_DIR", ROOT.parent / "shared" / "data"))

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar10-jpeg").is_dir():
        pytest.fail(f"shared data not found at {DATA_DIR}/cifar10-jpeg: put the shared data sets there "
                    f"or point PNNH_DATA_DIR at the folder that holds cifar10-jpeg/", pytrace=False)
    return DATA_DIR


def randomise_batchnorm(model: torch.nn.Module, seed: int = 1) -> None:
    """Give every BatchNorm non-trivial statistics and affine weights, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)

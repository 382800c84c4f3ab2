"""pnnh models through timm (the `timm` extra, in its own environment: `make test` runs this file there)."""
from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is tested in .venv-timm (make test runs it there)")

import pnnh  # noqa: E402
import pnnh.timm  # noqa: E402,F401  (registers the models)

# every registered timm name and its pnnh model (kinds such as looks_linear hold an underscore)
BASES = {f"pnnh_{m}_{k}": m for m in pnnh.list_models() for k in pnnh.models.model_info(m)["kinds"]}


def test_every_pnnh_model_and_kind_is_registered() -> None:
    assert set(timm.list_models("pnnh_*")) == set(BASES)



@pytest.mark.parametrize("name", sorted(BASES))
def test_create_through_timm_and_forward(name: str) -> None:
    base = BASES[name]
    # train mode (batch statistics), as an untrained net is used: in eval mode a 1202-layer net at
    # initialisation, whose BatchNorm running statistics are still 0 and 1, overflows float32
    model = timm.create_model(name, num_classes=5, in_chans=3, drop_rate=0.0,
                              **pnnh.models.model_info(base)["test_kwargs"])
    config = timm.data.resolve_data_config(model=model)
    assert len(config["input_size"]) == 3 and len(config["mean"]) == 3
    assert config["crop_pct"] == (1.0 if config["input_size"][1] <= 64 else 0.875)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert model.pretrained_cfg["architecture"] == name


def test_timm_refuses_what_pnnh_does_not_do(tmp_path) -> None:
    with pytest.raises(pnnh.PnnhError, match="no pretrained weights"):
        timm.create_model("pnnh_resnet20_pnnh", pretrained=True)
    with pytest.raises(pnnh.PnnhError, match="drop_path_rate"):
        timm.create_model("pnnh_resnet20_pnnh", drop_path_rate=0.1)
    from pnnh.checkpoint import save_weights
    from pnnh.hub import model_config

    model = pnnh.create_model("resnet20", kind="pnnh", num_classes=10)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    save_weights(tmp_path / "best.safetensors", model.state_dict(),
                 {"model_config": model_config("resnet20", "pnnh", {}, 10, (3, 32, 32))})
    for path in (tmp_path / "w.pth", tmp_path / "best.safetensors"):  # timm's files and pnnh's
        loaded = timm.create_model("pnnh_resnet20_pnnh", checkpoint_path=str(path))
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))

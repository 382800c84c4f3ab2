"""torchvision's and timm's own ResNets through pnnh.from_resnet, on real images (the environment with
torchvision and timm: `make test` runs this file in .venv-timm).

Randomly initialised models (no downloads) with BatchNorm statistics and affine weights perturbed, in
eval mode. Images: the first images of the CIFAR-10 copy's test split, resized to 224 (and to 256, a
size nothing here was built for), normalised with ImageNet's statistics. The full 512-image check and
the cost of the plain form are benchmarks/convert_resnet.py.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torchvision = pytest.importorskip("torchvision", reason="torchvision is tested in .venv-timm (make test runs it)")
timm = pytest.importorskip("timm", reason="timm is tested in .venv-timm (make test runs it there)")

import pnnh  # noqa: E402
from pnnh.data import load_dataset  # noqa: E402
from pnnh.export import relative_error  # noqa: E402
from pnnh.resnet_import import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

from conftest import randomise_batchnorm  # noqa: E402


@pytest.fixture(scope="module")
def cifar_images(cifar_jpeg) -> torch.Tensor:
    images = load_dataset("imagefolder", cifar_jpeg, "test").images[:128]  # (N, H, W, C) uint8
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def build(library: str, arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)() if library == "torchvision" else timm.create_model(arch)
    randomise_batchnorm(model)
    return model.eval()


# images: (at 224, residual and pnnh forms; at 224, the plain chain; at 256, every form). A bottleneck's plain
# chain carries the identity through the 3x3 conv at many times the original's cost (resnet50: 35x the time;
# benchmarks/convert_resnet.py), so timm's resnet50, whose weights map as torchvision's do, leaves it out.
@pytest.mark.parametrize("library,arch,counts", [("torchvision", "resnet18", (64, 16, 8)),
                                                 ("timm", "resnet18", (32, 8, 4)),
                                                 ("torchvision", "resnet50", (16, 2, 2)),
                                                 ("timm", "resnet50", (8, 0, 2))])
def test_every_form_computes_the_original_on_real_images(cifar_images, library: str, arch: str,
                                                         counts: tuple[int, int, int]) -> None:
    original = build(library, arch)
    residual = pnnh.from_resnet(original)
    pnnh_form = pnnh.from_resnet(original, kind="pnnh")
    assert residual.model_config["origin"] == {"library": library, "arch": arch,
                                               "sha256": residual.model_config["origin"]["sha256"]}
    assert sum(p.numel() for p in residual.parameters()) == sum(p.numel() for p in original.parameters())
    forms = {"residual": residual, "pnnh": pnnh_form}
    if counts[1]:
        forms["plain chain"] = pnnh.to_plain(pnnh_form)
    for size, count, names in ((224, counts[0], ("residual", "pnnh")), (224, counts[1], ("plain chain",)),
                               (256, counts[2], tuple(forms))):
        if not count:
            continue
        x = F.interpolate(cifar_images[:count], size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            expected = original(x)
            for name in names:
                got = forms[name](x)
                assert relative_error(got, expected) < 1e-4, (name, size)
                assert torch.equal(got.argmax(1), expected.argmax(1)), (name, size)


@pytest.mark.parametrize("make,message", [
    (lambda: timm.create_model("resnet50d"), "deep stem"),
    (lambda: timm.create_model("seresnet50"), "SE/attention"),
    (lambda: timm.create_model("resnet50", drop_path_rate=0.1), "stochastic depth"),
    (lambda: timm.create_model("resnet26"), "blocks (2, 2, 2, 2) (bottleneck"),
    (lambda: torchvision.models.resnext50_32x4d(), "grouped convolutions"),
    (lambda: torchvision.models.vgg11(), "is not a torchvision or timm ResNet"),
])
def test_what_is_not_a_standard_resnet_is_refused(make, message: str) -> None:
    with pytest.raises(pnnh.PnnhError, match="resnet18, resnet34, resnet50") as error:
        pnnh.from_resnet(make())
    assert message in str(error.value)


def test_a_named_architecture_must_match_the_module() -> None:
    with pytest.raises(pnnh.PnnhError, match="the module is a resnet18, not a resnet34"):
        pnnh.from_resnet(torchvision.models.resnet18(), arch="resnet34")


def test_wide_resnet_maps_to_a_learner_twice_as_wide() -> None:
    original = build("torchvision", "wide_resnet50_2")
    converted = pnnh.from_resnet(original, kind="pnnh")
    assert converted.model_config["kwargs"] == {"learner_ratio": 2.0}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert relative_error(converted(x), original(x)) < 1e-4

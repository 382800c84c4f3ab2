"""Bring your own ResNet (pnnh.from_resnet, pnnh convert): torchvision/timm weights as pnnh's forms, exactly.

Here, without torchvision: the weights are a pnnh residual model's, renamed to torchvision's keys (the
mapping's inverse), which checks the renaming, the pnnh form and its plain chain, the command and its
refusals. tests/test_timm.py, in the environment with torchvision and timm, checks against their own
modules on real images.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pnnh
from pnnh.export import relative_error
from pnnh.resnet_import import ARCHS, key_map

from conftest import assert_one_line_error, pnnh_main, randomise_batchnorm


def torchvision_state(arch: str, num_classes: int = 7, seed: int = 0) -> dict:
    """A ResNet state dict under torchvision's key names, from a randomly initialised pnnh residual model."""
    name, options, _, _ = ARCHS[arch]
    torch.manual_seed(seed)
    model = pnnh.create_model(name, num_classes=num_classes, **options)
    randomise_batchnorm(model, seed)
    ours = model.state_dict()
    return {src: ours[dst].clone() for src, dst in key_map(arch).items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_the_weights_become_the_same_function_in_every_form(arch: str) -> None:
    state = torchvision_state(arch)
    residual = pnnh.from_resnet(state, arch)
    pnnh_form = pnnh.from_resnet(state, arch, kind="pnnh")
    assert residual.model_config["origin"]["arch"] == arch and residual.model_config["num_classes"] == 7
    assert pnnh_form.kind == "pnnh" and not any(".shortcut." in k for k in pnnh_form.state_dict())
    chain = pnnh.to_plain(pnnh_form)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = residual(x)
        assert relative_error(pnnh_form(x), expected) < 1e-5
        assert relative_error(chain(x), expected) < 1e-4
    # and the residual form is exactly the weights given: renamed, not recomputed
    back = {src: residual.state_dict()[dst] for src, dst in key_map(arch).items()}
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_refusals_name_what_is_wrong_and_what_is_supported() -> None:
    state = torchvision_state("resnet18")
    with pytest.raises(pnnh.PnnhError, match="supported: resnet18, resnet34"):
        pnnh.from_resnet(state, "resnext50_32x4d")
    with pytest.raises(pnnh.PnnhError, match="missing layer1.2.conv1.weight"):
        pnnh.from_resnet(state, "resnet34")
    with pytest.raises(pnnh.PnnhError, match="plain chain is pnnh.to_plain"):
        pnnh.from_resnet(state, "resnet18", kind="plain")
    with pytest.raises(pnnh.PnnhError, match="name the architecture"):
        pnnh.from_resnet(state)
    with pytest.raises(pnnh.PnnhError, match="is not a torchvision or timm ResNet"):
        pnnh.from_resnet(torch.nn.Linear(3, 3))
    wrong = {**state, "layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)}
    with pytest.raises(pnnh.PnnhError, match=r"layer2.0.conv1.weight \(128, 64, 1, 1\) \(a resnet18 has "
                                             r"\(128, 64, 3, 3\)\)"):
        pnnh.from_resnet(wrong, "resnet18")
    extra = {**state, "layer1.0.se.fc1.weight": torch.zeros(4, 64, 1, 1)}
    with pytest.raises(pnnh.PnnhError, match="unexpected layer1.0.se.fc1.weight"):
        pnnh.from_resnet(extra, "resnet18")


def test_convert_writes_every_form_loadable_and_checked(tmp_path: Path) -> None:
    state = torchvision_state("resnet18", num_classes=1000)
    weights = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, weights)  # as saved from DistributedDataParallel
    out = tmp_path / "converted"
    result = pnnh_main("convert", weights, "--arch", "resnet18", "--output", out, "--formats", "safetensors,onnx",
                       "--batch-size", "2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and set(report["parity"]) == {"pnnh", "plain torch", "plain safetensors", "plain onnx"}
    assert all(v < 1e-4 for v in report["parity"].values())
    assert report["origin"]["sha256"] == __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "convert.json", "plain/export.json", "plain/model.onnx", "plain/model.safetensors", "pnnh.safetensors",
        "residual.safetensors"]
    assert report["params"]["residual"] == 11_689_512  # torchvision's resnet18
    x = torch.randn(2, 3, 128, 128)  # not the size the parity was checked at
    loaded = {name: pnnh.load_model(out / name) for name in ("residual.safetensors", "pnnh.safetensors",
                                                             "plain/model.safetensors")}
    assert loaded["pnnh.safetensors"].model_config["origin"]["weights"] == "resnet18.pth"
    with torch.no_grad():
        expected = loaded["residual.safetensors"](x)
        for model in loaded.values():
            assert relative_error(model(x), expected) < 1e-4


def test_convert_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision_state("resnet18"), weights)
    out = tmp_path / "out"
    assert_one_line_error(pnnh_main("convert", weights, "--arch", "resnet34", "--output", out), "missing layer1.2")
    assert_one_line_error(pnnh_main("convert", tmp_path / "none.pth", "--arch", "resnet18", "--output", out),
                          "does not exist")
    assert_one_line_error(pnnh_main("convert", weights, "--arch", "vgg16", "--output", out), "--arch", "resnet50")
    assert_one_line_error(pnnh_main("convert", weights, "--arch", "resnet18", "--output", out, "--formats", "tflite"),
                          "tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.pth"]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(pnnh_main("convert", weights, "--arch", "resnet18", "--output", out), "not an empty folder")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_a_converted_model_is_evaluated_and_probed_like_a_trained_run(tmp_path: Path, cifar_jpeg: Path) -> None:
    weights = tmp_path / "resnet18-cifar.pth"
    torch.save(torchvision_state("resnet18", num_classes=10), weights)  # as if fine-tuned on 10 classes
    out = tmp_path / "converted"
    assert pnnh_main("convert", weights, "--arch", "resnet18", "--output", out, "--formats", "safetensors",
                     "--batch-size", "1").returncode == 0
    data = ["--data", "imagefolder", "--data-dir", cifar_jpeg, "--workers", "0", "--device", "cpu"]
    result = pnnh_main("eval", "--checkpoint", out / "pnnh.safetensors", *data, "--test-subset", "64", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["images"] == 64 and 0 <= scores["top1"] <= 1 and scores["kind"] == "pnnh"
    probe = pnnh_main("probe", "--checkpoint", out / "residual.safetensors", "--data", "imagefolder", "--data-dir",
                      cifar_jpeg, "--num-images", "16", "--json")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout)["layers"]
    seven = tmp_path / "seven"
    torch.save(torchvision_state("resnet18", num_classes=7), tmp_path / "seven.pth")
    assert pnnh_main("convert", tmp_path / "seven.pth", "--arch", "resnet18", "--output", seven, "--formats",
                     "safetensors", "--batch-size", "1").returncode == 0
    assert_one_line_error(pnnh_main("eval", "--checkpoint", seven / "pnnh.safetensors", *data), "scores 7 classes",
                          "has 10")

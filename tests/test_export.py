"""One way to load a run (load_model, safetensors) and the deployable export, checked for parity."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import pnnh
from pnnh.checkpoint import load_checkpoint, save_atomic, save_weights
from pnnh.convert import PLAIN_MODULE_TYPES
from pnnh.export import export_model
from pnnh.hub import model_config

from conftest import assert_one_line_error, pnnh_main, randomise_batchnorm, run_cli

FAMILIES = ["resnet20", "resnet18", "vgg11", "vit_cifar_6"]  # one model of each family


def _saved(tmp_path: Path, name: str, kind: str, size: int = 32) -> tuple[nn.Module, Path, Path]:
    torch.manual_seed(0)
    model = pnnh.create_model(name, kind=kind, num_classes=7)
    randomise_batchnorm(model)
    model.eval()
    config = model_config(name, kind, {}, 7, (3, size, size), [0.5] * 3, [0.25] * 3, [f"c{i}" for i in range(7)])
    weights, state = tmp_path / f"{name}-{kind}.safetensors", tmp_path / f"{name}-{kind}.pt"
    save_weights(weights, model.state_dict(), {"model_config": config})
    save_atomic({"model_config": config, "model": model.state_dict()}, state)
    return model, weights, state


@pytest.mark.parametrize("name,kind", [(n, k) for n in FAMILIES for k in pnnh.models.model_info(n)["kinds"]])
def test_load_model_round_trip(name: str, kind: str, tmp_path: Path) -> None:
    model, weights, state = _saved(tmp_path, name, kind)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        for path in (weights, state):
            loaded = pnnh.load_model(path)
            assert not loaded.training and loaded.model_config["classes"][0] == "c0"
            assert torch.equal(loaded(x), expected)
    again = pnnh.create_model(name, kind=kind, num_classes=7, checkpoint_path=str(weights)).eval()
    with torch.no_grad():
        assert torch.equal(again(x), expected)


def test_safetensors_refuse_corruption_and_hold_no_pickle(tmp_path: Path) -> None:
    _, weights, _ = _saved(tmp_path, "resnet20", "pnnh")
    raw = bytearray(weights.read_bytes())
    assert b"\x80\x04" not in raw[:64]  # not a pickle
    raw[-100] ^= 0x10  # a tensor byte
    (tmp_path / "flipped.safetensors").write_bytes(bytes(raw))
    with pytest.raises(pnnh.PnnhError, match="corrupt"):
        pnnh.load_model(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(pnnh.PnnhError, match="cannot load"):
        load_checkpoint(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("name,kind", [("resnet20", "pnnh"), ("resnet18", "plain"), ("vgg11", "pnnh"),
                                       ("vit_cifar_6", "pnnh"), ("resnet20", "residual")])
def test_export_parity_of_every_form(name: str, kind: str, tmp_path: Path) -> None:
    model, weights, _ = _saved(tmp_path, name, kind, size=64 if name in ("resnet18", "vgg11") else 32)
    report = export_model(weights, tmp_path / "export", batch_size=4)
    assert report["passed"] and set(report["parity"]) == {"torch", "safetensors", "pt2", "onnx"}
    assert max(report["parity"].values()) < 1e-4
    assert report["plain_form"] == (kind != "residual")
    deployed = pnnh.load_model(tmp_path / "export" / "model.safetensors")
    if kind != "residual":  # the deployable file holds the plain chain itself
        assert isinstance(deployed, nn.Sequential) and all(isinstance(m, PLAIN_MODULE_TYPES) for m in deployed)
    x = torch.randn(3, 3, *report["model_config"]["input_size"][1:])
    with torch.no_grad():
        assert (deployed(x) - model(x)).abs().max() <= 1e-4 * model(x).abs().max()
    saved = json.loads((tmp_path / "export" / "export.json").read_text())
    assert saved["parity"] == report["parity"]


def test_export_cli_json_and_failing_parity(tmp_path: Path) -> None:
    _, weights, _ = _saved(tmp_path, "resnet20", "plain")
    result = run_cli("export", weights, "--output", tmp_path / "out", "--formats", "safetensors,pt2", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds only the JSON report; progress went to stderr
    assert report["passed"] and report["files"] == {"safetensors": "model.safetensors", "pt2": "model.pt2"}
    failing = pnnh_main("export", weights, "--output", tmp_path / "strict", "--formats", "safetensors",
                        "--tolerance", "1e-30")
    assert_one_line_error(failing, "export parity failed for")
    assert_one_line_error(pnnh_main("export", weights, "--formats", "tflite"), "unknown --formats tflite")


def test_tensorboard_events_hold_the_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pnnh.config import TrainConfig
    from pnnh.train import train

    summary = train(TrainConfig(model="resnet20", data="fashion-mnist", train_subset=64, test_subset=32, batch_size=32,
                                epochs=2, workers=0, log="tensorboard", output=str(tmp_path / "run")))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert {"train_loss", "test_acc", "lr"} <= set(events.Tags()["scalars"])
    got = [(e.step, e.value) for e in events.Scalars("test_acc")]
    assert got == [(row["epoch"], pytest.approx(row["test_acc"])) for row in summary["history"]]

"""Named recipes and their parts: the settings a recipe resolves to, the run config that records them,
the average of the weights (EMA) across a resume, and flip test-time augmentation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pnnh
from pnnh.config import TrainConfig, config_differences
from pnnh.data import load_dataset, make_loader
from pnnh.device import bf16_units, hardware
from pnnh.errors import PnnhError
from pnnh.evaluate import evaluate, evaluate_checkpoint, format_eval
from pnnh.optim import build_optimizer, make_ema, update_ema
from pnnh.recipes import RECIPES, recipe_config, recipe_options
from pnnh.train import TrainingInterrupted, train

from conftest import assert_one_line_error, pnnh_main

TINY = dict(model="resnet20", data="fashion-mnist", train_subset=256, test_subset=128, batch_size=32, workers=0)


def test_cifar_fast_resolves_to_its_documented_settings() -> None:
    options = recipe_options("cifar-fast", device="cpu")
    has_bf16 = bool(bf16_units())
    assert options == {"epochs": 25, "batch_size": 512, "opt": "sgd", "lr": 0.8, "momentum": 0.9,
                       "weight_decay": 5e-4, "sched": "onecycle", "warmup_epochs": 2.0, "label_smoothing": 0.1,
                       "crop_padding": 4, "flip": True, "ema": 0.98, "eval_flip": True, "channels_last": True,
                       "amp": "bf16" if has_bf16 else "none", "recipe": "cifar-fast"}
    assert RECIPES["cifar-fast"]["amp"] == "auto"  # resolved per machine, never recorded as "auto"
    cfg = recipe_config("cifar-fast", model="resnet56", seed=2, device="cpu")
    cfg.validate()
    assert (cfg.model, cfg.seed, cfg.lr, cfg.recipe) == ("resnet56", 2, 0.8, "cifar-fast")
    # a recipe is a setting: runs of another recipe, or none, differ from it in named keys
    assert {"batch_size", "ema", "eval_flip", "recipe", "lr"} <= set(config_differences(cfg, TrainConfig()))
    with pytest.raises(pnnh.PnnhError, match="unknown recipe 'fast'; recipes: cifar-fast"):
        recipe_options("fast")


@pytest.mark.parametrize("units,amp", [([], "none"), (["avx512_bf16"], "bf16"), (["amx_bf16"], "bf16")])
def test_the_recipe_takes_bf16_only_where_the_cpu_has_units_and_says_so_where_not(monkeypatch, caplog, units,
                                                                                  amp) -> None:
    monkeypatch.setattr("pnnh.recipes.bf16_units", lambda: units)
    with caplog.at_level("INFO", logger="pnnh"):
        assert recipe_options("cifar-fast", device="cpu")["amp"] == amp
    assert ("trains in float32" in caplog.text) == (amp == "none")


@pytest.mark.parametrize("flags,tag", [({"avx2"}, "no bf16 units"), ({"avx2", "avx512_bf16"}, "avx512_bf16"),
                                       ({"avx512_bf16", "amx_bf16"}, "AMX")])
def test_an_epochs_hardware_line_tells_cpus_of_one_name_apart_by_their_bf16_units(monkeypatch, flags, tag) -> None:
    """Two 'AMD EPYC's differ threefold in the recipe's speed: the metrics row names the bf16 units."""
    monkeypatch.setattr("pnnh.device.cpu_flags", lambda: flags)
    monkeypatch.setattr("pnnh.device.cpu_name", lambda: "AMD EPYC")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert hardware(torch.device("cpu")) == f"AMD EPYC ({tag}), 2 torch threads"


def test_a_recipe_run_records_every_setting_and_flags_win(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = pnnh_main("train", "--recipe", "cifar-fast", "--model", "resnet20", "--data", "fashion-mnist",
                       "--train-subset", 256, "--test-subset", 128, "--batch-size", 64, "--epochs", 2,
                       "--warmup-epochs", 0.5, "--amp", "none", "--workers", 0, "--device", "cpu", "--output", run)
    assert result.returncode == 0, result.stderr
    config = json.loads((run / "config.json").read_text())
    recipe = recipe_options("cifar-fast", "cpu")
    given = {"batch_size": 64, "epochs": 2, "warmup_epochs": 0.5, "amp": "none"}
    assert all(config[k] == (given[k] if k in given else v) for k, v in recipe.items())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["test_acc_flip"] <= 1 for r in rows)  # flip TTA reported beside test_acc
    assert_one_line_error(pnnh_main("train", "--recipe", "nope"), "unknown recipe 'nope'")


def test_nesterov_is_the_default_and_can_be_turned_off_for_an_ablation() -> None:
    """The recipe's Nesterov SGD, one switch away from classical momentum (an ingredient measured alone)."""
    model = torch.nn.Linear(3, 2)
    cpu = torch.device("cpu")
    on, _, _ = build_optimizer(recipe_config("cifar-fast", device="cpu"), model, 10, cpu)
    off, _, _ = build_optimizer(recipe_config("cifar-fast", device="cpu", nesterov=False), model, 10, cpu)
    assert on.defaults["nesterov"] is True and off.defaults["nesterov"] is False
    assert off.defaults["momentum"] == on.defaults["momentum"] == 0.9
    assert config_differences(recipe_config("cifar-fast", nesterov=False), recipe_config("cifar-fast")) == ["nesterov"]
    no_momentum, _, _ = build_optimizer(TrainConfig(momentum=0.0), model, 10, cpu)  # torch refuses Nesterov there
    assert no_momentum.defaults["nesterov"] is False


def test_update_ema_is_the_documented_average() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model)
    assert not any(p.requires_grad for p in ema.parameters())
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()(torch.randn(8, 3))  # BatchNorm statistics and its counter move
    update_ema(ema, model, decay=0.9, step=5)
    d = min(0.9, 6 / 15)  # the warm-up: (1 + step) / (10 + step) while below the decay
    for key, value in ema.state_dict().items():
        current = model.state_dict()[key]
        expected = d * before[key] + (1 - d) * current if value.is_floating_point() else current
        assert torch.allclose(value, expected), key
    update_ema(ema, model, decay=0.9, step=10_000)  # after the warm-up, the decay itself
    assert torch.allclose(ema[0].weight, 0.9 * (d * before["0.weight"] + (1 - d) * model[0].weight)
                          + 0.1 * model[0].weight)


def test_an_ema_run_resumes_exactly_and_delivers_the_average(tmp_path: Path) -> None:
    base = dict(TINY, epochs=2, sched="onecycle", ema=0.9, eval_flip=True)
    straight = train(TrainConfig(**base, output=str(tmp_path / "straight")))
    with pytest.raises(TrainingInterrupted):
        train(TrainConfig(**base, output=str(tmp_path / "stopped"), stop_after_steps=5))
    resumed = train(TrainConfig(**base, output=str(tmp_path / "stopped")), resume=tmp_path / "stopped" / "last.pt")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert [r["test_acc"] for r in resumed["history"]] == [r["test_acc"] for r in straight["history"]]
    # the average is what is tested, saved as best and returned; it differs from the last weights
    assert any(not torch.equal(a["ema"][k], a["model"][k]) for k in a["model"])
    delivered = straight["model"].state_dict()
    assert all(torch.equal(delivered[k], a["ema"][k]) for k in delivered)
    best = pnnh.load_model(tmp_path / "straight" / "best.safetensors").state_dict()
    assert all(torch.equal(best[k], a["ema"][k].contiguous()) for k in best)


def test_last_pt_of_an_ema_run_rebuilds_the_average_unless_raw_is_asked(tmp_path: Path) -> None:
    """pnnh eval on last.pt reports what the run reported (the average), and the trained weights on request."""
    cfg = TrainConfig(**TINY, epochs=1, ema=0.9, output=str(tmp_path / "run"))
    summary = train(cfg)
    last = tmp_path / "run" / "last.pt"
    saved = torch.load(last, weights_only=True)
    for weights, key in (("auto", "ema"), ("ema", "ema"), ("raw", "model")):
        state = pnnh.load_model(last, weights=weights).state_dict()
        assert all(torch.equal(state[k], saved[key][k]) for k in state), weights
    average = evaluate_checkpoint(last, cfg)
    assert average["weights"] == "ema" and average["top1"] == summary["history"][-1]["test_acc"]
    trained = evaluate_checkpoint(last, cfg, weights="raw")
    assert trained["weights"] == "raw" and trained["loss"] != average["loss"]
    assert "trained weights" in format_eval(trained) and "average" in format_eval(average)
    best = evaluate_checkpoint(tmp_path / "run" / "best.safetensors", cfg)
    assert best["weights"] == "ema" and best["top1"] == average["top1"]
    with pytest.raises(PnnhError, match="holds one set of weights"):
        pnnh.load_model(tmp_path / "run" / "best.safetensors", weights="raw")
    result = pnnh_main("eval", "--checkpoint", tmp_path / "run" / "best.safetensors", "--weights", "ema",
                       "--data", "fashion-mnist", "--test-subset", 64)
    assert_one_line_error(result, "applies to a run's last.pt")


def test_flip_tta_is_the_mean_of_the_logits_of_an_image_and_its_mirror() -> None:
    torch.manual_seed(0)
    model = pnnh.create_model("resnet20", num_classes=10, in_chans=1).eval()
    data = load_dataset("fashion-mnist", None, "test").subset(96, 0)
    loader = make_loader(data, 32, False, "cpu")
    result = evaluate(model, loader, torch.device("cpu"), flip=True)
    hits = 0
    with torch.no_grad():
        for x, y in loader.batches(0):
            hits += int(((model(x) + model(torch.flip(x, dims=[3]))).argmax(1) == y).sum())
    assert result["top1_flip"] == hits / 96 and result["images"] == 96
    assert evaluate(model, loader, torch.device("cpu"))["top1_flip"] is None

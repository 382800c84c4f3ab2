"""The probe's metrics, DISTS, the dissipation ordering at initialisation, and the theorem checks."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import pnnh
from pnnh.analysis import DISTS, linear_cka, probe, ridge_r2, theory
from pnnh.analysis.dists import VGG16_STAGES
from pnnh.data import load_dataset
from pnnh.data.loader import channel_stats, normalised

from conftest import assert_one_line_error, pnnh_main, run_cli


@pytest.fixture(scope="module")
def cifar_images(cifar_jpeg: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised, [0, 1]) test images of the shared CIFAR-10 copy."""
    data = load_dataset("imagefolder", cifar_jpeg, "test").subset(512, 0)
    return normalised(data.images, *channel_stats(data.images)), data.images.permute(0, 3, 1, 2).float() / 255


def test_cka_properties(cifar_images) -> None:
    x = cifar_images[0][:64].flatten(1)
    y = torch.relu(x @ torch.randn(3072, 256))
    q, _ = torch.linalg.qr(torch.randn(256, 256))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, y) == pytest.approx(linear_cka(x, y @ q), abs=1e-6)   # orthogonal transform
    assert linear_cka(x, y) == pytest.approx(linear_cka(3.7 * x, y), abs=1e-9)  # isotropic scaling
    assert abs(linear_cka(x, torch.randn(64, 4096))) < 0.1                    # debiased: ~0 for noise


def test_ridge_r2_recovers_an_invertible_map_and_not_noise(cifar_images) -> None:
    target = nn.functional.adaptive_avg_pool2d(cifar_images[0], 4).flatten(1)  # 48 dims, 512 images
    mixed = target @ torch.randn(48, 48) + 0.01 * target  # invertible
    assert ridge_r2(mixed, target) > 0.97
    assert ridge_r2(torch.randn(512, 1000), target) < 0.05


def _small_backbone() -> DISTS:
    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())]
    return DISTS(stages, [8, 16])


def test_dists_properties(cifar_images) -> None:
    dists = _small_backbone()
    raw = cifar_images[1]
    x, y = raw[:16], raw[16:32]
    assert dists(x, x).abs().max() < 1e-9
    torch.testing.assert_close(dists(x, y), dists(y, x))
    d = dists(x, y)
    assert (d >= 0).all() and (d <= 1).all() and d.mean() > 0.01
    noise = torch.rand_like(x)
    assert dists(x, noise).mean() > dists(x, (x + 0.02 * noise).clamp(0, 1)).mean()


def test_dists_loads_vgg16_weights_in_torchvision_layout(cifar_images, tmp_path: Path) -> None:
    torch.manual_seed(0)
    state, index, in_ch = {}, 0, 3
    for stage in VGG16_STAGES:
        for item in stage:
            if item == "L2":
                index += 1
                continue
            state[f"features.{index}.weight"] = torch.randn(item, in_ch, 3, 3) * (2 / (9 * in_ch)) ** 0.5
            state[f"features.{index}.bias"] = torch.zeros(item)
            index, in_ch = index + 2, item
    torch.save(state, tmp_path / "vgg16.pt")
    dists = DISTS.from_vgg16(tmp_path / "vgg16.pt")
    x = cifar_images[1][:4]
    assert dists(x, x).abs().max() < 1e-9 and (dists(x, x.flip(3)) > 0).all()
    with pytest.raises(pnnh.PnnhError, match="does not exist"):
        DISTS.from_vgg16(tmp_path / "missing.pt")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(pnnh.PnnhError, match="not a VGG16 state dict"):
        DISTS.from_vgg16(tmp_path / "bad.pt")


def test_plain_resnet56_dissipates_its_input_and_residual_and_pnnh_keep_it(cifar_images) -> None:
    images, raw = cifar_images[0][:64], cifar_images[1][:64]
    results = {}
    for kind in pnnh.models.BASE_KINDS:
        torch.manual_seed(0)
        model = pnnh.create_model("resnet56", kind=kind)
        results[kind] = probe(model, images, raw, metrics=("cka", "r2"), batch_stats=True)
    # "beyond the first few blocks": the rest of the first two stages, blocks 4 to 17 (layers 9 to 36)
    window = range(9, 37)

    def mean(kind: str, metric: str) -> float:
        return sum(results[kind]["layers"][i][metric] for i in window) / len(window)

    summary = {k: {m: round(mean(k, m), 3) for m in ("cka", "r2")} | {"floor": results[k]["noise_floor"]}
               for k in results}
    for metric in ("cka", "r2"):
        plain_floor = results["plain"]["noise_floor"][metric]
        plain_gap = mean("plain", metric) - plain_floor
        for kind in ("residual", "pnnh"):
            gap = mean(kind, metric) - results[kind]["noise_floor"][metric]
            assert gap > 0.15, f"{kind} {metric} is not well above its noise floor: {summary}"
            assert plain_gap < 0.5 * gap, f"plain {metric} does not fall towards the floor: {summary}"
    assert len(results["plain"]["layers"]) == 55  # the stem and 2 activations in each of 27 blocks


def test_theorem_checks() -> None:
    result = theory(width=512, depth=10, samples=1024)
    t32 = result["theorem_3_2"]
    assert t32["plain"]["var_ratio"] == pytest.approx(2.0, rel=0.02)
    assert t32["residual"]["var_ratio"] == pytest.approx(3.0, rel=0.02)
    assert abs(t32["plain"]["mean"]) < 0.02 and abs(t32["residual"]["mean"]) < 0.02
    at_mu = result["theorem_3_2_at_mu"]["residual"]
    assert at_mu["var"] == pytest.approx(at_mu["exact_var"], rel=0.02)
    rows = result["theorem_3_3"]
    assert len(rows) == 30 and {r["kind"] for r in rows} == {"plain", "residual", "pnnh"}
    for row in rows:
        assert row["survival"] >= row["bound"] - 1e-9, row
    assert all(r["bound"] > 0.1 for r in rows if r["kind"] == "residual")
    assert all(r["survival"] == 1.0 for r in rows if r["kind"] == "pnnh")
    assert all(0.4 < r["jacobian_rank_fraction"] < 0.6 for r in result["proposition_3_1"])


def test_cli_probe_and_theory_outputs(tmp_path: Path, cifar_jpeg: Path) -> None:
    result = run_cli("probe", "--model", "resnet20", "--kinds", "residual,plain", "--data", "imagefolder",
                     "--data-dir", cifar_jpeg, "--num-images", "32", "--output", tmp_path / "probe", "--json")
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert [r["kind"] for r in runs] == ["residual", "plain"]
    layer = runs[0]["layers"][0]
    assert set(layer) == {"index", "name", "cka", "r2", "survival", "dead", "erank", "spread", "dists"}
    assert 0 < layer["spread"] < 1  # a conv's feature map differs from pixel to pixel
    assert layer["dists"] is None and any("DISTS skipped" in n for n in runs[0]["notes"])
    assert set(runs[0]["noise_floor"]) >= {"cka", "r2"}
    assert [row["index"] for row in runs[1]["layers"]] == list(range(19))
    files = {p.name for p in (tmp_path / "probe").iterdir()}
    assert {"probe.json", "probe.csv", "probe_cka.png", "probe_r2.png", "probe_survival.png"} <= files
    assert len((tmp_path / "probe" / "probe.csv").read_text().splitlines()) == 1 + 2 * 19

    result = pnnh_main("theory", "--width", "128", "--depth", "4", "--samples", "256", "--json",
                       "--output", tmp_path / "theory")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out["theorem_3_2"]["plain"]) >= {"mean", "var", "var_ratio"}
    assert set(out["theorem_3_3"][0]) >= {"kind", "depth", "survival", "bound"}
    assert (tmp_path / "theory" / "theory.png").stat().st_size > 1000
    assert_one_line_error(pnnh_main("probe", "--model", "resnet20", "--data", "imagefolder", "--data-dir",
                                    cifar_jpeg, "--dists-weights", tmp_path / "none.pt"), "does not exist")
    # entries with options, as compare takes them: the narrow-code PNNH ViT keeps its tokens apart
    result = pnnh_main("probe", "--entries", "vit_cifar_6:plain,vit_cifar_6:pnnh:code_ratio=0.5", "--data",
                       "imagefolder", "--data-dir", cifar_jpeg, "--num-images", "16", "--json",
                       "--output", tmp_path / "entries")
    assert result.returncode == 0, result.stderr
    plain, narrow = json.loads(result.stdout)
    assert (plain["label"], narrow["label"]) == ("plain", "pnnh:code_ratio=0.5")
    with open(tmp_path / "entries" / "probe.csv") as f:  # the CSV tells two variants of a kind apart
        labels = [row["label"] for row in csv.DictReader(f)]
    assert labels == ["plain"] * 6 + ["pnnh:code_ratio=0.5"] * 6
    assert plain["layers"][-1]["spread"] < 1e-6 < 0.1 < narrow["layers"][-1]["spread"]
    assert_one_line_error(pnnh_main("probe", "--entries", "vit_cifar_6:plain", "--model", "resnet20"),
                          "--entries names each model")


def test_probe_on_a_vit(cifar_jpeg) -> None:
    from pnnh.analysis.probe import load_probe_images

    images, _, _ = load_probe_images("imagefolder", str(cifar_jpeg), 32)
    torch.manual_seed(0)
    models = {kind: pnnh.create_model("vit_cifar_6", kind=kind) for kind in ("residual", "plain", "pnnh")}
    for model in models.values():  # the same weights in all three: only what crosses a sub-layer differs
        model.load_state_dict({**model.state_dict(), **models["residual"].state_dict()})
    results = {kind: probe(model, images, metrics=("cka", "survival", "spread")) for kind, model in models.items()}
    for result in results.values():  # one layer per MLP activation (GELU), tokens flattened per image
        assert len(result["layers"]) == 6 and all(-1 <= row["cka"] <= 1 for row in result["layers"])
    # rank collapse: without a skip the attention averages an image's tokens into one vector within two
    # blocks (query and key weights are small at initialisation); a skip, or the PNNH code, keeps them apart
    spread = {kind: [row["spread"] for row in r["layers"]] for kind, r in results.items()}
    assert max(spread["plain"][1:]) < 1e-6 and spread["plain"][0] < 0.1
    assert min(spread["residual"]) > 0.1 and spread["pnnh"] == pytest.approx(spread["residual"], rel=1e-3)
    # the frozen coder computes the residual function: the same curve; plain differs
    assert [r["cka"] for r in results["pnnh"]["layers"]] == pytest.approx(
        [r["cka"] for r in results["residual"]["layers"]], abs=1e-4)
    assert results["plain"]["layers"][-1]["cka"] != pytest.approx(results["residual"]["layers"][-1]["cka"], abs=1e-3)

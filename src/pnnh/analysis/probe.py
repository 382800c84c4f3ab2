"""The dissipating-inputs probe: for every layer, in forward order, how much of the input survives.

A "layer" is every call of an activation module (ReLU, GELU, SiLU, ...), so the probe
works on any ``nn.Module``: its input is the pre-activation, its output the layer's
representation. A noise floor comes from the same measures taken between the real
input and the model's response to images of pure noise, so "reaches the level of
noise" is a measured statement.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import load_checkpoint
from ..data import load_dataset
from ..data.loader import channel_stats, normalised
from ..entries import Entry
from ..errors import PnnhError
from ..hub import create_model, model_from_checkpoint
from ..io import make_dir, write_csv, write_json
from ..models.tat import TReLU
from ..progress import bar, log
from .dists import DISTS, feature_map_image
from .metrics import effective_rank_gram, gram, linear_cka_gram, position_spread, ridge_r2_gram, survival
from .plots import plot_probe

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Hardswish,
               TReLU)  # the last: the tat kind's activation
METRICS = ("cka", "r2", "survival", "erank", "spread", "dists")


def spread_cell(row: dict) -> str:
    """A layer's spread across positions for a table: 3 significant digits (it spans 1e-14 to 1), "-" if absent."""
    return "-" if row.get("spread") is None else f"{row['spread']:.3g}"


@torch.no_grad()
def layer_responses(model: nn.Module, images: torch.Tensor, batch_stats: bool = False
                    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(name, pre-activation, output)] of every activation call, in the order the forward pass makes them.

    ``batch_stats``: normalise with the batch's statistics (BatchNorm in training mode, as a net at
    initialisation is used), leaving the running statistics untouched; else eval mode.
    """
    records: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATIONS):
            hooks.append(module.register_forward_hook(
                lambda m, inp, out, name=name: records.append((name, inp[0].detach().cpu(), out.detach().cpu()))))
    if not hooks:
        raise PnnhError(f"{type(model).__name__} has no activation modules (nn.ReLU, nn.GELU, ...) to probe")
    was_training = model.training
    saved = [(m, m.momentum, mean, var, mean.clone(), var.clone()) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and (mean := m.running_mean) is not None and (var := m.running_var) is not None]
    model.train(batch_stats)
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
        for m, momentum, mean, var, mean_before, var_before in saved:
            m.momentum = momentum
            mean.copy_(mean_before)
            var.copy_(var_before)
        model.train(was_training)
    return records


def reconstruction_target(images: torch.Tensor, side: int = 4) -> torch.Tensor:
    """The fixed downsampled copy of the input that R^2 asks a layer to reconstruct (side x side per channel)."""
    return F.adaptive_avg_pool2d(images.float(), min(side, *images.shape[2:])).flatten(1)


def probe(model: nn.Module, images: torch.Tensor, raw_images: torch.Tensor | None = None,
          metrics: tuple[str, ...] = METRICS, dists: DISTS | None = None, seed: int = 0,
          batch_stats: bool = False) -> dict:
    """Measure every layer of ``model`` on ``images`` (normalised as the model expects).

    ``raw_images`` (the same images in [0, 1], 3 channels) are what DISTS compares; DISTS is
    computed only when a ``dists`` model (with real weights) is given. ``batch_stats``: see
    ``layer_responses`` (use it for a model at initialisation, whose running statistics are unset).
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise PnnhError(f"unknown probe metric(s) {', '.join(unknown)}; valid: {', '.join(METRICS)}")
    if images.shape[0] < 8:
        raise PnnhError(f"the probe needs at least 8 images, got {images.shape[0]}")
    use_dists = "dists" in metrics and dists is not None
    if use_dists and (raw_images is None or raw_images.shape[1] != 3):
        raise PnnhError("DISTS compares RGB images: pass raw_images of shape (n, 3, H, W) in [0, 1]")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g).to(images.dtype).to(images.device)
    real = layer_responses(model, images, batch_stats)
    fake = layer_responses(model, noise, batch_stats)
    k_input = gram(images.detach().cpu())
    target = reconstruction_target(images.detach().cpu())
    size = (images.shape[2], images.shape[3]) if images.dim() == 4 else (0, 0)
    layers: list[dict] = []
    floors: dict[str, list[float]] = {"cka": [], "r2": [], "dists": []}
    for index, ((name, pre, out), (_, _, out_noise)) in enumerate(zip(real, fake)):
        row = {"index": index, "name": name}
        k_out, k_noise = gram(out), gram(out_noise)
        if "cka" in metrics:
            row["cka"] = linear_cka_gram(k_input, k_out)
            floors["cka"].append(linear_cka_gram(k_input, k_noise))
        if "r2" in metrics:
            row["r2"] = ridge_r2_gram(k_out, target, seed=seed)
            floors["r2"].append(ridge_r2_gram(k_noise, target, seed=seed))
        if "survival" in metrics:
            row["survival"], row["dead"] = survival(pre)
        if "erank" in metrics:
            row["erank"] = effective_rank_gram(k_out)
        if "spread" in metrics:
            row["spread"] = position_spread(out)
        if "dists" in metrics:
            if dists is not None and raw_images is not None and out.dim() == 4:
                row["dists"] = float(dists(raw_images.cpu(), feature_map_image(out, size)).mean())
                floors["dists"].append(float(dists(raw_images.cpu(), feature_map_image(out_noise, size)).mean()))
            else:
                row["dists"] = None
        layers.append(row)
    noise_floor = {"cka": max(floors["cka"]) if floors["cka"] else None,
                   "r2": max(floors["r2"]) if floors["r2"] else None,
                   "dists": min(floors["dists"]) if floors["dists"] else None}
    notes = ["noise_floor: the highest CKA/R^2 (lowest DISTS) over layers between the real input and the "
             "model's response to Gaussian-noise images"]
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        notes.append("BatchNorm used " + ("the batch's statistics (a model at initialisation)" if batch_stats
                                          else "its running statistics (eval mode)"))
    if "dists" in metrics and not use_dists:
        notes.append("DISTS skipped: it needs ImageNet-trained VGG16 weights (--dists-weights PATH)")
    return {"num_images": int(images.shape[0]), "layers": layers, "noise_floor": noise_floor, "notes": notes}


def load_probe_images(data: str, data_dir: str | None, num_images: int, seed: int = 0,
                      stats: tuple[list[float], list[float]] | None = None, cache_dir: str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images normalised with ``stats`` or their own, the same as RGB in [0, 1], number of classes):
    a fixed seeded subset of the test split."""
    split = load_dataset(data, data_dir, "test", False, cache_dir)
    if not hasattr(split, "subset"):
        raise PnnhError("the probe reads in-memory data sets (CIFAR, MNIST family, small image folders)")
    if len(split) < num_images:
        raise PnnhError(f"--num-images {num_images} but the test split has {len(split)} images")
    split = split.subset(num_images, seed)
    mean, std = stats or channel_stats(split.images)
    images = normalised(split.images, mean, std)
    raw = split.images.permute(0, 3, 1, 2).float() / 255
    rgb = raw if raw.shape[1] == 3 else raw.expand(-1, 3, -1, -1)
    return images, rgb, len(split.classes)


def probe_entries(entries: list[Entry], checkpoint: str | None = None, data: str = "cifar10",
                  data_dir: str | None = None, cache_dir: str | None = None, num_images: int = 256, seed: int = 0,
                  dists_weights: str | None = None) -> list[dict]:
    """``pnnh probe``: each entry at initialisation (seeded), or the trained model of ``checkpoint`` (then
    ``entries`` must be empty), on ``num_images`` test images of ``data``; one result per model."""
    if not 0 <= seed < 2**32:
        raise PnnhError(f"--seed must be from 0 to 4,294,967,295, got {seed}")
    loaded = load_checkpoint(checkpoint) if checkpoint else {}
    model_config = loaded.get("model_config")
    if checkpoint and not model_config:
        raise PnnhError(f"{checkpoint} does not record its model (a bare state dict): probe a checkpoint "
                        f"written by pnnh train")
    stats = None
    if model_config:  # normalised as in training; the entry only names the model
        entries = [Entry(model_config["name"], model_config["kind"], dict(model_config.get("kwargs") or {}))]
        stats = (model_config["mean"], model_config["std"]) if model_config["mean"] else None
    images, rgb, num_classes = load_probe_images(data, data_dir, num_images, seed, stats, cache_dir)
    dists = DISTS.from_vgg16(dists_weights) if dists_weights else None
    runs = []
    for entry in bar(entries, desc="probe", unit="model"):
        torch.manual_seed(seed)
        if model_config:
            model = model_from_checkpoint(loaded, checkpoint)
        else:
            model = create_model(entry.model, kind=entry.kind, num_classes=num_classes, in_chans=images.shape[1],
                                 **entry.kwargs)
        log.info(f"probing {entry.label} on {len(images)} images")
        result = probe(model, images, rgb, dists=dists, seed=seed, batch_stats=not loaded)
        runs.append({"model": entry.model, "kind": entry.kind, "label": entry.label.split(":", 1)[1],
                     "trained": bool(loaded), **result})
    return runs


def write_probe(runs: list[dict], out: Path) -> list[Path]:
    """probe.json, probe.csv (a row per layer) and the PNG plots in ``out``; returns the plots written."""
    make_dir(out, "--output")
    write_json(out / "probe.json", runs if len(runs) > 1 else runs[0])
    write_csv(out / "probe.csv", [{"model": run["model"], "kind": run["kind"], "label": run["label"], **row}
                                  for run in runs for row in run["layers"]],
              ["model", "kind", "label", "index", "name", "cka", "r2", "survival", "dead", "erank", "spread",
               "dists"])
    return plot_probe(runs, out)


def format_probe(runs: list[dict]) -> str:
    """The probe's results as a table per model, with its noise floor and notes."""
    lines = []
    for run in runs:
        floor = run["noise_floor"]
        lines.append(f"{run['model']} ({run['label']}): noise floor CKA {floor['cka']:.3f}, R^2 {floor['r2']:.3f}")
        lines.append(f"  {'layer':<28} {'cka':>6} {'r2':>7} {'surv':>6} {'dead':>6} {'erank':>7} {'spread':>7} "
                     f"{'dists':>6}")
        for row in run["layers"]:
            d = "-" if row.get("dists") is None else f"{row['dists']:.3f}"
            lines.append(f"  {row['name']:<28} {row['cka']:>6.3f} {row['r2']:>7.3f} {row['survival']:>6.3f} "
                         f"{row['dead']:>6.3f} {row['erank']:>7.2f} {spread_cell(row):>7} {d:>6}")
        lines += [f"  note: {note}" for note in run["notes"]]
    return "\n".join(lines)

"""Whether a ViT kind learns at all: a short training with the ViT matrix's optimiser, in float32 or bf16.

Why the plain ViT stays at chance is measured at initialisation by the probe's spread across positions
(`pnnh probe --entries vit_cifar_12:residual,vit_cifar_12:plain ...`: its tokens collapse into one vector per
image within two blocks). This script asks what that costs in training, away from the matrix's 10 epochs:
``--steps`` steps of AdamW lr 1e-3 (linear warm-up over ``--warmup`` steps, weight decay 0.05 off
norms/biases/position embedding, label smoothing 0.1, clipping at norm 1) at batch 64 on the 10,000 training
images of the matrix's seed 0, without augmentation, one seed; the loss every 20 steps (one batch each) and
the accuracy on 1,000 test images at the end.

    python benchmarks/vit_signal.py --entries vit_cifar_12:residual,vit_cifar_12:plain --steps 120 [--amp bf16]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from pnnh import create_model
from pnnh.data import load_dataset
from pnnh.data.loader import channel_stats, normalised
from pnnh.device import autocast
from pnnh.entries import parse_entries
from pnnh.optim import lr_factor, param_groups


def images(data_dir: str, split: str, n: int, stats=None):
    d = load_dataset("imagefolder", data_dir, split).subset(n, 0)
    mean, std = stats or channel_stats(d.images)
    return normalised(d.images, mean, std), d.labels, (mean, std)


def short_training(model, train, test, steps: int, warmup: int, amp: str) -> dict:
    (xt, yt), (xe, ye) = train, test
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    g, log = torch.Generator().manual_seed(0), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * lr_factor(step, steps, warmup, "constant")
        i = torch.randint(0, len(yt), (64,), generator=g)
        with autocast(torch.device("cpu"), amp):
            loss = F.cross_entropy(model(xt[i]).float(), yt[i], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0 or step == steps - 1:
            log.append([step, round(loss.item(), 4)])
            print(f"  step {step}: loss {loss.item():.4f}", file=sys.stderr, flush=True)
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        acc = sum((model(xe[i:i + 250]).argmax(1) == ye[i:i + 250]).sum().item() for i in range(0, len(ye), 250))
    return {"loss_by_step": log, "test_acc_1000": acc / len(ye)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", required=True, help="e.g. vit_cifar_12:residual,vit_cifar_12:plain")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg"))
    p.add_argument("--steps", type=int, default=120, help="optimiser steps per entry")
    p.add_argument("--warmup", type=int, default=78, help="warm-up steps (78: one epoch of the ViT matrix)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast for the short training")
    args = p.parse_args()
    x, y, stats = images(args.data_dir, "train", 10000)
    test = images(args.data_dir, "test", 1000, stats)[:2]
    out = {"command": "python benchmarks/vit_signal.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "amp": args.amp, "entries": {}}
    for entry in parse_entries(args.entries):
        torch.manual_seed(0)
        model = create_model(entry.model, kind=entry.kind, num_classes=10, **entry.kwargs)
        print(entry.label, file=sys.stderr, flush=True)
        out["entries"][entry.label] = short_training(model, (x, y), test, args.steps, args.warmup, args.amp)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

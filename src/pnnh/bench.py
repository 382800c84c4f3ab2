"""Throughput side by side: every entry measured interleaved (A B C A B C ...) in one process."""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .convert import to_plain
from .device import check_amp, hardware, resolve_device, to_channels_last
from .entries import Entry
from .errors import PnnhError
from .models import create_model
from .profile import count_macs, count_params
from .progress import bar


def _training_memory_mb(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """Bytes held at the peak of a CPU training step: parameters, gradients, optimiser state and the
    activations autograd saves for backward (counted with saved-tensor hooks; temporaries not included)."""
    seen: set[tuple[int, torch.dtype]] = set()
    saved = [0]  # bytes

    def pack(t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            saved[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return (saved[0] + state + 2 * params) / 2**20


def bench(entries: list[Entry], device: str = "cpu", batch_size: int = 32, input_size: int | None = None,
          in_chans: int = 3, num_classes: int = 10, repeats: int = 5, steps: int = 3, warmup: int = 2,
          channels_last: bool = False, amp: str = "none", compile: bool = False) -> dict:
    """Train and inference images/s of each entry, interleaved; median and spread over ``repeats``."""
    if repeats < 1 or steps < 1 or batch_size < 1:
        raise PnnhError("--repeats, --steps and --batch-size must be at least 1")
    dev = resolve_device(device)
    check_amp(dev, amp)
    built: list[dict[str, Any]] = []
    for e in entries:
        torch.manual_seed(0)
        net = create_model(e.model, kind=e.kind, num_classes=num_classes, in_chans=in_chans, **e.kwargs).to(dev)
        size: int = input_size or net.default_cfg["input_size"][1]
        model: nn.Module = net
        if e.plain_form:
            model = to_plain(model.eval())
        if channels_last:
            to_channels_last(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x = torch.randn(batch_size, in_chans, size, size, device=dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch_size,), device=dev)
        built.append({"entry": e, "model": model, "fwd": torch.compile(model) if compile else model, "opt": opt,
                      "x": x, "y": y, "size": size, "train": [], "infer": []})
    cast = torch.autocast(dev.type, dtype=torch.bfloat16) if amp == "bf16" else torch.autocast(dev.type, enabled=False)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_time(b) -> float | None:
        if b["entry"].plain_form:  # the deployable chain: inference only
            return None
        b["model"].train()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with cast:
                loss = F.cross_entropy(b["fwd"](b["x"]), b["y"])
            b["opt"].zero_grad(set_to_none=True)
            loss.backward()
            b["opt"].step()
        sync()
        return (time.perf_counter() - start) / steps

    @torch.no_grad()
    def infer_time(b) -> float:
        b["model"].eval()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with cast:
                b["fwd"](b["x"])
        sync()
        return (time.perf_counter() - start) / steps

    for b in bar(built, desc="bench warm-up", unit="model"):  # also the first touch of every buffer
        for _ in range(warmup):
            train_time(b), infer_time(b)
    for _ in bar(range(repeats), desc="bench rounds", unit="round"):
        for b in built:
            t = train_time(b)
            if t is not None:
                b["train"].append(batch_size / t)
            b["infer"].append(batch_size / infer_time(b))

    rows = []
    for b in built:
        e, model = b["entry"], b["model"]
        if e.plain_form:
            peak = None
        elif dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            train_time(b)
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            peak = _training_memory_mb(model.train(), b["opt"], b["x"], b["y"])
        rows.append({"model": e.model, "kind": e.kind, "variant": e.variant, "plain_form": e.plain_form,
                     "label": e.label, "params": count_params(model),
                     "macs": count_macs(model, (in_chans, b["size"], b["size"])),
                     "train_img_s": statistics.median(b["train"]) if b["train"] else None,
                     "infer_img_s": statistics.median(b["infer"]),
                     "train_img_s_range": [min(b["train"]), max(b["train"])] if b["train"] else None,
                     "infer_img_s_range": [min(b["infer"]), max(b["infer"])], "peak_mem_mb": peak})
    train_ref = next((r["train_img_s"] for r in rows if r["train_img_s"]), None)
    for row in rows:
        row["ratio_train"] = row["train_img_s"] / train_ref if row["train_img_s"] and train_ref else None
        row["ratio_infer"] = row["infer_img_s"] / rows[0]["infer_img_s"]
    return {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "hardware": hardware(dev), "amp": amp, "channels_last": channels_last,
            "compile": compile, "batch_size": batch_size, "input_size": built[0]["size"], "repeats": repeats,
            "steps_per_repeat": steps, "peak_mem_kind": "cuda max_memory_allocated" if dev.type == "cuda" else
            "params + grads + optimiser state + saved activations", "entries": rows}


def format_bench(result: dict) -> str:
    lines = [f"{result['hardware']}, torch {result['torch']}, batch {result['batch_size']}, input "
             f"{result['input_size']}px, median of {result['repeats']} interleaved repeats",
             f"{'entry':<34} {'params':>9} {'GMACs':>7} {'train img/s':>12} {'ratio':>6} {'infer img/s':>12} "
             f"{'ratio':>6} {'mem MB':>8}"]
    def cell(v, width: int, fmt: str) -> str:
        return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"

    for r in result["entries"]:
        lines.append(f"{r['label']:<34} {r['params'] / 1e6:>8.3f}M {r['macs'] / 1e9:>7.3f} "
                     f"{cell(r['train_img_s'], 12, '.1f')} {cell(r['ratio_train'], 6, '.2f')} "
                     f"{r['infer_img_s']:>12.1f} {r['ratio_infer']:>6.2f} {cell(r['peak_mem_mb'], 8, '.1f')}")
    return "\n".join(lines)

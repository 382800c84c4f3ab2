"""airbench 0.1.8's ``train93`` on a CPU, its recipe unchanged: only its device calls are mapped.

    .venv-timm/bin/pip install airbench==0.1.8        # it imports torchvision: run it in the timm environment
    .venv-timm/bin/python benchmarks/airbench_cpu.py --output benchmarks/results/time_to_accuracy/airbench93.json

The mapping, and nothing else: ``.cuda()`` is a no-op; fp16 (``.half()``) is bf16, which this CPU runs on its
bf16 units; CUDA events time with the wall clock and ``torch.cuda.synchronize`` is a no-op; the data load
onto the CPU. Its data are the CIFAR-10 (JPEG q75 copy) that pnnh trains on, decoded by pnnh into airbench's
``cifar10/{train,test}.pt`` in a work folder. Written: test accuracy (no test-time augmentation) and training
seconds after every epoch (airbench's own timer, which leaves evaluation out), the final accuracy with
airbench's test-time augmentation (mirror + translate), and the machine.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from pnnh.data import load_dataset
from pnnh.device import bf16_units, cpu_name
from pnnh.io import make_dir, write_json

ROOT = Path(__file__).resolve().parents[1]


class WallClockEvent:
    """torch.cuda.Event's timing interface on the wall clock (the CPU runs synchronously)."""

    def __init__(self, enable_timing: bool = False):
        self.at = 0.0

    def record(self, stream=None) -> None:
        self.at = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        return 1e3 * (end.at - self.at)


def map_cuda_to_cpu() -> None:
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    torch.Tensor.half = lambda self, *args, **kwargs: self.to(torch.bfloat16)  # type: ignore[method-assign]
    nn.Module.half = lambda self: self.to(torch.bfloat16)  # type: ignore[method-assign]
    torch.cuda.Event = WallClockEvent  # type: ignore[misc,assignment]
    torch.cuda.synchronize = lambda *args, **kwargs: None
    load = torch.load
    torch.load = lambda f, *args, **kwargs: load(f, **{**kwargs, "map_location": "cpu"})  # type: ignore[assignment]


def write_airbench_data(data_dir: str, work: Path) -> None:
    """airbench reads cifar10/train.pt and test.pt (uint8 NHWC images, labels, class names) from its cwd."""
    folder = make_dir(work / "cifar10")
    for split, name in (("train", "train.pt"), ("test", "test.pt")):
        if not (folder / name).exists():
            data = load_dataset("imagefolder", data_dir, split)
            torch.save({"images": data.images, "labels": data.labels, "classes": data.classes}, folder / name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg"))
    p.add_argument("--work", default=str(ROOT / ".cache" / "airbench"), help="folder for airbench's data files")
    p.add_argument("--output", required=True, help="JSON of the run")
    args = p.parse_args()
    output = Path(args.output).resolve()  # before airbench's chdir
    import airbench  # the separate environment's package (pip install airbench==0.1.8)
    from airbench import utils

    write_airbench_data(args.data_dir, Path(args.work))
    map_cuda_to_cpu()
    rows: list[dict] = []
    final: dict = {}

    def record(variables: dict, is_final_entry: bool) -> None:
        if is_final_entry:
            final.update(tta_test_acc=variables["tta_val_acc"], seconds=variables["total_time_seconds"])
        elif variables.get("epoch") is not None:
            rows.append({"epoch": variables["epoch"] + 1, "test_acc": variables["val_acc"],
                         "train_seconds": variables["total_time_seconds"]})
            print(f"airbench93 epoch {rows[-1]['epoch']}: test {100 * rows[-1]['test_acc']:.2f}% after "
                  f"{rows[-1]['train_seconds']:.0f} s", flush=True)

    utils.print_training_details = record
    os.chdir(args.work)
    started = time.perf_counter()
    airbench.train93(run=0, verbose=True)
    write_json(output, {
        "entry": "airbench 0.1.8 train93 (CPU shim: .cuda no-op, fp16 as bf16, wall-clock timers)",
        "epochs": rows, **final, "wall_seconds": time.perf_counter() - started,
        "machine": {"cpu": cpu_name(), "bf16_units": bf16_units(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "data": f"CIFAR-10 (JPEG q75 copy) at {args.data_dir}", "command": "python benchmarks/airbench_cpu.py"})


if __name__ == "__main__":
    main()

"""Where training runs: the device, the CPU's model and bf16 units, and the precision it allows.

``train``, ``evaluate`` and ``bench`` share these, so a benchmark and a run record the same hardware line.
"""
from __future__ import annotations

import platform
from contextlib import nullcontext

import torch
import torch.nn as nn

from .errors import PnnhError
from .progress import log


def usable_devices() -> list[str]:
    """The --device values this build of torch can use here."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(gpus)] if gpus else [])


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU if there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; anything this build of
    torch cannot use here is refused, naming what it can."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usable = usable_devices()
    if name not in usable:
        raise PnnhError(f"--device {name!r} cannot be used with this build of torch on this machine; usable: "
                        f"{', '.join(usable)}")
    return torch.device(name)


def bf16_units() -> list[str]:
    """The CPU's bf16 units, as /proc/cpuinfo names them (amx_bf16, avx512_bf16); [] where bf16 is emulated."""
    return sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def hardware(device: torch.device, world_size: int = 1) -> str:
    """Where an epoch ran, as its metrics row records it: the CPU model, its bf16 units and torch threads, or
    the GPU."""
    if device.type == "cpu":
        threads, units = torch.get_num_threads(), bf16_units()
        # the bf16 units tell two CPUs of one model name apart (an EPYC with avx512_bf16 trains the bf16
        # recipe about 3x as fast as one with AVX2 only)
        tag = "AMX" if "amx_bf16" in units else units[0] if units else "no bf16 units"
        where = f"{cpu_name()} ({tag}), {threads} torch thread{'s' if threads > 1 else ''}"
    else:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return where if world_size == 1 else f"{world_size} processes x {where}"


def check_amp(device: torch.device, amp: str) -> None:
    """Refuse fp16 on a CPU (emulated); warn about bf16 on a CPU without bf16 units (emulated, ~10x slower)."""
    if device.type != "cpu":
        return
    if amp == "fp16":
        raise PnnhError("--amp fp16 on a CPU is emulated (about 25x slower than float32): use --amp bf16 on a CPU "
                        "with AMX or AVX512-BF16 units, or --amp none")
    if amp == "bf16" and not bf16_units():
        log.warning("warning: this CPU has no bf16 units (no amx_bf16 or avx512_bf16 in /proc/cpuinfo): --amp bf16 "
                    "is emulated here and runs several times slower than float32 (--amp none)")


def to_channels_last(model: nn.Module) -> nn.Module:
    """The model's 4-d weights in channels-last memory order (in place; returned for chaining)."""
    return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub lacks it


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

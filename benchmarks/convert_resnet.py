"""A torchvision ResNet through pnnh.from_resnet: parity on real images, and what its plain chain costs.

    .venv-timm/bin/python benchmarks/convert_resnet.py                  # resnet18 and resnet50
    .venv-timm/bin/python benchmarks/convert_resnet.py --arch resnet18 --images 64 --repeats 1   # quick

Runs where torchvision imports (.venv-timm; ONNX rows need onnxruntime there: pip install onnx onnxruntime).
Per architecture, torchvision's module randomly initialised with BatchNorm statistics and affine weights
perturbed (as in the tests; no download), in eval mode, float32, on the CPU:

- parity: max |difference| / max |logit| and top-1 agreement of pnnh's residual and pnnh forms and the plain
  chain against the module, on the first --images images of the CIFAR-10 (JPEG q75 copy) test split resized
  to 224, and a quarter as many at 256 (the plain chain on --chain-images at 224: a bottleneck's chain is
  tens of times slower); the chain's ONNX file run by onnxruntime on 8 of them;
- cost, original against plain chain (and its ONNX run): parameters, MACs per 224 x 224 image, inference
  images/s at batch 1 and 32 (interleaved rounds, median), and the peak resident memory of a fresh process
  that builds the form and runs one batch (weights included; the increase over the built form beside it).

Writes benchmarks/results/convert_resnet/<arch>.json and convert_resnet.md (the tables).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pnnh
from pnnh.convert import randomise_batchnorm
from pnnh.data import load_dataset
from pnnh.device import bf16_units, cpu_name
from pnnh.export import onnx_bytes, relative_error
from pnnh.io import write_atomic, write_json
from pnnh.profile import count_macs
from pnnh.resnet_import import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "convert_resnet"
DATA_DIR = ROOT.parent / "shared" / "data" / "cifar10-jpeg"


def original_module(arch: str) -> torch.nn.Module:
    import torchvision
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    randomise_batchnorm(model, seed=1)
    return model.eval()


def forms(arch: str) -> dict[str, torch.nn.Module]:
    original = original_module(arch)
    pnnh_form = pnnh.from_resnet(original, kind="pnnh")
    return {"original": original, "residual": pnnh.from_resnet(original), "pnnh": pnnh_form,
            "plain chain": pnnh.to_plain(pnnh_form)}


def images(n: int, size: int) -> torch.Tensor:
    x = load_dataset("imagefolder", DATA_DIR, "test").images[:n].permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def batched(model: torch.nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def parity(models: dict, n: int, chain_n: int) -> dict:
    out = {}
    for size, count in ((224, n), (256, max(1, n // 4))):
        x = images(count, size)
        expected = batched(models["original"], x)
        for name in ("residual", "pnnh", "plain chain"):
            k = min(count, chain_n) if name == "plain chain" else count
            got = batched(models[name], x[:k])
            out[f"{name} @{size}"] = {"images": k, "rel_err": relative_error(got, expected[:k]),
                                      "top1_agree": float((got.argmax(1) == expected[:k].argmax(1)).float().mean())}
        print(f"parity at {size}: {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def onnx_session(model: torch.nn.Module):
    """The model as an onnxruntime session (pnnh.export's ONNX writer), or the reason there is none."""
    try:
        import onnxruntime
    except ImportError:
        return None, "onnxruntime not installed"
    try:
        program = onnx_bytes(model, torch.randn(1, 3, 224, 224))
    except pnnh.PnnhError as e:
        return None, str(e)
    return onnxruntime.InferenceSession(program, providers=["CPUExecutionProvider"]), None


def speed(runners: dict, batch: int, repeats: int) -> dict:
    """images/s of each runner at ``batch``: one warm-up, then ``repeats`` interleaved rounds; the median."""
    x = torch.randn(batch, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        run(x)
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def peak_memory(arch: str, form: str, batch: int) -> dict:
    """Peak RSS (MiB) of a fresh process that builds ``form`` and runs one batch, and the increase over the
    built form: a child process each, so that one form's peak does not hide another's."""
    done = subprocess.run([sys.executable, __file__, "--memory", arch, form, str(batch)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(done.stdout)


def memory_child(arch: str, form: str, batch: int) -> None:
    """--memory: build one form (the others freed), reset the peak, run one batch; print the peak RSS and
    the increase over the built form (MiB) as JSON. Linux: /proc/self/clear_refs resets the peak."""
    original = original_module(arch)
    if form == "original":
        model = original
    else:
        model = pnnh.to_plain(pnnh.from_resnet(original, kind="pnnh"))
        del original
    session = onnx_session(model)[0] if form == "plain chain onnx" else None
    if session is not None:
        del model
    gc.collect()
    x = torch.randn(batch, 3, 224, 224)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    with torch.no_grad():
        session.run(None, {"images": x.numpy()}) if session is not None else model(x)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": round(peak / 1024), "increase_mib": round((peak - before) / 1024)}))


def _status_kib(key: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(key + ":"))
    return int(line.split()[1])


def measure(arch: str, n: int, chain_n: int, repeats: int) -> dict:
    models = forms(arch)
    result: dict = {"arch": arch, "parity": parity(models, n, chain_n)}
    session, why_not = onnx_session(models["plain chain"])
    if session is not None:
        x = images(8, 224)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        result["parity"]["plain chain onnx @224"] = {"images": 8, "rel_err": relative_error(got, batched(
            models["original"], x)), "top1_agree": float((got.argmax(1) == batched(models["original"], x).argmax(1))
                                                        .float().mean())}
    result["onnx"] = "ok" if session is not None else why_not
    cost: dict = {}
    for name in ("original", "plain chain"):
        m = models[name]
        cost[name] = {"params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, (3, 224, 224))}
    runners = {name: (lambda x, m=models[name]: batched(m, x, len(x))) for name in ("original", "plain chain")}
    if session is not None:
        runners["plain chain onnx"] = lambda x: session.run(None, {"images": x.numpy()})
    for batch in (1, 32):
        print(f"{arch}: speed at batch {batch}", file=sys.stderr, flush=True)
        for name, img_s in speed(runners, batch, repeats).items():
            cost.setdefault(name, {})[f"img_s_batch{batch}"] = img_s
        for name in runners:
            cost[name][f"memory_batch{batch}"] = peak_memory(arch, name, batch)
    result["cost"] = cost
    return result


def table(results: list[dict]) -> str:
    lines = ["| architecture | form | images | max rel. error | top-1 agreement |", "|---|---|---|---|---|"]
    for r in results:
        lines += [f"| {r['arch']} | {name} | {p['images']} | {p['rel_err']:.1e} | {100 * p['top1_agree']:.1f}% |"
                  for name, p in r["parity"].items()]
    lines += ["", "| architecture | form | parameters | MACs (224) | img/s batch 1 | img/s batch 32 | "
              "peak MiB batch 1 (+ run) | peak MiB batch 32 (+ run) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, c in r["cost"].items():
            mem = [c.get(f"memory_batch{b}", {}) for b in (1, 32)]
            mem_s = [f"{m['peak_mib']:,} (+{m['increase_mib']:,})" if "peak_mib" in m else m.get("error", "–")
                     for m in mem]
            lines.append(f"| {r['arch']} | {name} | " + (f"{c['params'] / 1e6:.1f}M" if "params" in c else "–")
                         + " | " + (f"{c['macs'] / 1e9:.2f}G" if "macs" in c else "–")
                         + f" | {c['img_s_batch1']:.2f} | {c['img_s_batch32']:.2f} | {mem_s[0]} | {mem_s[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--images", type=int, default=512, help="images at 224 (a quarter as many at 256)")
    p.add_argument("--chain-images", type=int, default=32, help="images through the plain chain at 224")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory", nargs=3, metavar=("ARCH", "FORM", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory:
        return memory_child(args.memory[0], args.memory[1], int(args.memory[2]))
    machine = {"cpu": cpu_name(), "bf16_units": bf16_units(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    results = []
    for arch in args.arch:
        result = {**measure(arch, args.images, args.chain_images, args.repeats), "machine": machine,
                  "command": "python benchmarks/convert_resnet.py " + " ".join(sys.argv[1:])}
        write_json(OUT / f"{arch}.json", result)
        results.append(result)
    text = table(results)
    write_atomic(OUT / "convert_resnet.md", text + "\n")
    print(text)
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
          file=sys.stderr)


if __name__ == "__main__":
    main()

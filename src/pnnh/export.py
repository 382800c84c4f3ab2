"""``pnnh export``: a trained model in the forms one deploys, each checked against the original.

A ``pnnh`` or ``plain`` model is written as its plain chain (``to_plain``: convs with bias, activations,
pooling, one linear layer; BatchNorm folded, the coder's code in ordinary channels); a ``residual``
model, which has no plain form, is written as it is. Files in the output folder:

- ``model.safetensors``: the weights, the model's config and (for a plain chain) its layer list, so that
  ``pnnh.load_model`` rebuilds it without pickle;
- ``model.pt2``: a ``torch.export`` program (batch size free);
- ``model.onnx``: ONNX (needs the ``export`` extra: onnx, onnxscript, onnxruntime), run through
  onnxruntime for its parity check;
- ``export.json``: what was written and the parity of each form against the original model.
"""
from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_weights
from .convert import chain_spec, relative_error, to_plain
from .errors import PnnhError
from .hub import load_model, model_from_checkpoint
from .io import make_dir, write_atomic, write_json
from .progress import log
from .resnet_import import from_resnet, residual_to_pnnh

FORMATS = ("safetensors", "pt2", "onnx")


def export_model(checkpoint: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS, batch_size: int = 8,
                 tolerance: float = 1e-4, seed: int = 0) -> dict:
    """Export the model of ``checkpoint`` into ``out``; returns the report (also written as export.json).

    Parity: each form's outputs on ``batch_size`` Gaussian inputs (of the model's input size) against
    the original model's, as max |difference| / max |output|; ``passed`` is whether all are <= tolerance.
    """
    check_export_options(formats, batch_size, tolerance)
    loaded = load_checkpoint(checkpoint)
    return export_loaded(model_from_checkpoint(loaded, checkpoint), out, formats, batch_size, tolerance, seed,
                         source=str(checkpoint))


def parse_formats(text: str) -> tuple[str, ...]:
    """--formats: a comma-separated list."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_export_options(formats: tuple[str, ...], batch_size: int, tolerance: float) -> None:
    if not tolerance > 0 or batch_size < 1:
        raise PnnhError("--tolerance must be positive and --batch-size at least 1")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise PnnhError(f"unknown --formats {', '.join(unknown) or '(none given)'}; valid: {', '.join(FORMATS)}")
    if "onnx" in formats:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise PnnhError("ONNX export needs the export extra: pip install 'pnnh[export]' "
                            "(or leave onnx out: --formats safetensors,pt2)") from None


def export_loaded(model: torch.nn.Module, out: str | Path, formats: tuple[str, ...], batch_size: int,
                  tolerance: float, seed: int, source: str) -> dict:
    """``export_model`` for a model already built (its build record in ``model.model_config``)."""
    model_config: dict = model.model_config  # type: ignore[assignment]
    out = make_dir(Path(out), "--output")
    plain = model_config["kind"] != "residual"
    chain = to_plain(model) if plain else None
    deploy = chain if chain is not None else model
    x = torch.randn(batch_size, *model_config["input_size"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
    parity: dict[str, float] = {}
    files: dict[str, str] = {}
    report = {"checkpoint": source, "model_config": model_config, "plain_form": plain,
              "params_original": sum(p.numel() for p in model.parameters()),
              "params_exported": sum(p.numel() for p in deploy.parameters()), "tolerance": tolerance,
              "files": files, "parity": parity}
    with torch.no_grad():
        parity["torch"] = relative_error(deploy(x), expected)
    if "safetensors" in formats:
        path = out / "model.safetensors"
        save_weights(path, deploy.state_dict(),
                     {"model_config": model_config, "plain_layers": chain_spec(chain) if chain is not None else None})
        with torch.no_grad():
            parity["safetensors"] = relative_error(load_model(path)(x), expected)
        files["safetensors"] = path.name
    if "pt2" in formats:
        path = out / "model.pt2"
        batch = torch.export.Dim("batch", min=1, max=4096)
        try:
            program = torch.export.export(deploy, (x,), dynamic_shapes=({0: batch},))
        except Exception as e:  # noqa: BLE001 -- torch.export raises many types; say which step failed
            raise PnnhError(f"torch.export failed on {model_config['name']} ({type(e).__name__}: "
                            f"{str(e)[:200]})") from None
        torch.export.save(program, path)
        program_module = torch.export.load(path).module()
        with torch.no_grad():
            parity["pt2"] = relative_error(program_module(x[:3]), expected[:3])
        files["pt2"] = path.name
    if "onnx" in formats:
        parity["onnx"] = _export_onnx(deploy, x, expected, out / "model.onnx")
        files["onnx"] = "model.onnx"
    report["passed"] = all(v <= tolerance for v in parity.values())
    write_json(out / "export.json", report)
    log.info(f"exported {model_config['name']} ({model_config['kind']}{', plain form' if plain else ''}) to {out}: "
             + ", ".join(f"{k} parity {v:.2e}" for k, v in parity.items()))
    return report


def onnx_bytes(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    """The model as an ONNX file's bytes (input ``images``, output ``logits``, batch size free); a model
    the exporter cannot write (e.g. over protobuf's 2 GiB) is a one-line refusal."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), buf,  # type: ignore[arg-type]  # the TorchScript exporter takes a file
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        except Exception as e:  # noqa: BLE001
            raise PnnhError(f"ONNX export failed ({type(e).__name__}: {str(e)[:200]})") from None
    return buf.getvalue()


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path) -> float:
    import onnxruntime  # check_export_options saw that it imports
    write_atomic(path, onnx_bytes(model, x))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x[:5].numpy()})[0]
    return relative_error(torch.from_numpy(got), expected[:5])


def format_export(report: dict, out: str | Path) -> str:
    """The export report as text: each form's parity against its tolerance, and the parameter counts."""
    tolerance = report["tolerance"]
    lines = [f"{name:<12} max |difference| / max |output| = {err:.2e}  "
             f"({'ok' if err <= tolerance else 'FAILED'}, tolerance {tolerance:g})"
             for name, err in report["parity"].items()]
    lines.append(f"parameters: {report['params_original']:,} -> {report['params_exported']:,}"
                 f"{' (plain form)' if report['plain_form'] else ''}; files in {out}")
    return "\n".join(lines)


def convert_resnet(weights: str | Path, arch: str, out: str | Path, formats: tuple[str, ...] = FORMATS,
                   batch_size: int = 8, tolerance: float = 1e-4, seed: int = 0) -> dict:
    """``pnnh convert``: a torchvision/timm ResNet's weights file as pnnh models, written all or nothing
    into the new folder ``out``:

    - ``residual.safetensors``: the same weights in pnnh's residual model;
    - ``pnnh.safetensors``: the pnnh kind computing the same function (both load with ``pnnh.load_model``,
      and ``pnnh eval`` and ``pnnh probe`` take them);
    - ``plain/``: the pnnh form's plain chain as ``pnnh export`` writes it (safetensors, pt2, ONNX);
    - ``convert.json``: the weights' origin, and the parity of each form against the residual form on
      ``batch_size`` Gaussian inputs of 224 x 224.
    """
    if str(out).strip() in ("", "."):
        raise PnnhError("--output must name a new folder for the converted files")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PnnhError(f"{out} already exists and is not an empty folder: choose another --output")
    check_export_options(formats, batch_size, tolerance)
    residual = from_resnet(weights, arch, "residual")
    pnnh = residual_to_pnnh(residual)
    partial = out.with_name(out.name + ".partial")  # renamed to out when everything is written
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for model in (residual, pnnh):
            save_weights(make_dir(partial, "--output") / f"{model.kind}.safetensors", model.state_dict(),
                         {"model_config": model.model_config})
        x = torch.randn(batch_size, *residual.model_config["input_size"],
                        generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = residual(x)
            parity = {"pnnh": relative_error(pnnh(x), expected)}
        plain = export_loaded(pnnh, partial / "plain", formats, batch_size, tolerance, seed, source="pnnh.safetensors")
        parity.update({f"plain {k}": v for k, v in plain["parity"].items()})  # against the pnnh form, itself checked
        report = {"weights": str(weights), "origin": residual.model_config["origin"],
                  "parity": parity, "tolerance": tolerance, "passed": all(v <= tolerance for v in parity.values()),
                  "params": {"residual": sum(p.numel() for p in residual.parameters()),
                             "pnnh": sum(p.numel() for p in pnnh.parameters()),
                             "plain chain": plain["params_exported"]},
                  "files": ["residual.safetensors", "pnnh.safetensors",
                            *(f"plain/{f}" for f in plain["files"].values()), "plain/export.json"]}
        if not report["passed"]:
            raise PnnhError("the converted forms do not compute the same function: "
                            + ", ".join(f"{k} {v:.2e}" for k, v in parity.items()) + f" (tolerance {tolerance:g})")
        write_json(partial / "convert.json", report)
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return report


def format_convert(report: dict, out: str | Path) -> str:
    """The conversion report as text: the origin, each form's parity, the parameter counts."""
    origin = report["origin"]
    lines = [f"{origin['arch']} from {report['weights']} (sha256 {origin['sha256'][:12]}...)"]
    lines += [f"{name:<18} max |difference| / max |logit| = {err:.2e}  "
              f"({'ok' if err <= report['tolerance'] else 'FAILED'}, tolerance {report['tolerance']:g})"
              for name, err in report["parity"].items()]
    lines.append("parameters: " + ", ".join(f"{k} {v:,}" for k, v in report["params"].items()) + f"; files in {out}")
    return "\n".join(lines)

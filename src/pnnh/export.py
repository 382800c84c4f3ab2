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
import warnings
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_weights
from .convert import chain_spec, to_plain
from .errors import PnnhError
from .hub import load_model, model_from_checkpoint
from .io import make_dir, write_atomic, write_json
from .progress import log

FORMATS = ("safetensors", "pt2", "onnx")


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12))


def export_model(checkpoint: str | Path, out: str | Path, formats: tuple[str, ...] = FORMATS, batch_size: int = 8,
                 tolerance: float = 1e-4, seed: int = 0) -> dict:
    """Export the model of ``checkpoint`` into ``out``; returns the report (also written as export.json).

    Parity: each form's outputs on ``batch_size`` Gaussian inputs (of the model's input size) against
    the original model's, as max |difference| / max |output|; ``passed`` is whether all are <= tolerance.
    """
    if not tolerance > 0 or batch_size < 1:
        raise PnnhError("--tolerance must be positive and --batch-size at least 1")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise PnnhError(f"unknown export format(s) {', '.join(unknown)}; valid: {', '.join(FORMATS)}")
    loaded = load_checkpoint(checkpoint)
    model = model_from_checkpoint(loaded, checkpoint)
    model_config: dict = loaded["model_config"]
    out = make_dir(Path(out))
    plain = model_config["kind"] != "residual"
    chain = to_plain(model) if plain else None
    deploy = chain if chain is not None else model
    x = torch.randn(batch_size, *model_config["input_size"], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(x)
    parity: dict[str, float] = {}
    files: dict[str, str] = {}
    report = {"checkpoint": str(checkpoint), "model_config": model_config, "plain_form": plain,
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


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor, path: Path) -> float:
    try:
        import onnxruntime
    except ImportError:
        raise PnnhError("ONNX export needs the export extra: pip install 'pnnh[export]' "
                        "(or leave onnx out: --formats safetensors,pt2)") from None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), buf,  # type: ignore[arg-type]  # the TorchScript exporter takes a file
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
        except Exception as e:  # noqa: BLE001
            raise PnnhError(f"ONNX export failed ({type(e).__name__}: {str(e)[:200]})") from None
    write_atomic(path, buf.getvalue())
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

"""Deployment artefacts: merged standalone models, adapter-only files, torch.export and ONNX.

* Merging folds each LoRA update into its base weight (peft ``merge_and_unload``: W' = W + s·B·A),
  so the deployed encoder is a plain Clay ViT with no adapter overhead. The merged model is written
  as a run directory with strategy ``full`` (``weights.safetensors`` holds every tensor,
  ``config.yaml`` + ``base.json`` describe it), so ``load_run`` and ``floodlora predict`` read it
  without the base checkpoint. Export refuses to write a model whose predictions differ from the
  unmerged one by more than the tolerance.
* An adapter file is the LoRA tensors + decoder in safetensors, with the base checkpoint's name and
  sha256, the LoRA settings and the run config in its metadata: one base checkpoint on disk serves
  many events or regions, each a few MB.
* torch.export / ONNX graphs take the views (in the model's order), time and latlon at batch 1 and
  one tile size; whole scenes are tiled by floodlora.inference.tiling as usual.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from floodlora.errors import ConfigError, FloodLoraError
from floodlora.models.strategies import strategy_of
from floodlora.runs import load_run, save_adapter, save_run

EXPORT_FILE = "export.json"
MERGE_TOLERANCE = 1e-5


def _probe_inputs(model: nn.Module, size: int, seed: int = 0) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = len(model.bands)
    views = {v: torch.randn(1, c, size, size, generator=g) for v in model.views}
    t = torch.randn(1, 4, generator=g).clamp(-1, 1)
    ll = torch.randn(1, 4, generator=g).clamp(-1, 1)
    return views, t, ll


@torch.inference_mode()
def max_prediction_difference(a: nn.Module, b: nn.Module, size: int = 32, seed: int = 0) -> float:
    """Largest |logit difference| of two segmentors on one random probe (all views present)."""
    views, t, ll = _probe_inputs(a, size, seed)
    a.eval()
    b.eval()
    return float((a(views, t, ll) - b(views, t, ll)).abs().max())


# --------------------------------------------------------------------------------------------------
# graph exports
# --------------------------------------------------------------------------------------------------


class ExportableSegmentor(nn.Module):
    """Positional-tensor front end for graph export: (*views in model order, time, latlon) -> logits.

    Skips the missing-view bookkeeping of FloodSegmentor.forward (a Python side effect); every view
    is an input. A model with several outputs (label kinds) exports the one its `target` (or, unset,
    its full set of views) selects, so an exported graph always returns `[B, 1, H, W]`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if strategy_of(model).has_adapters:
            raise ConfigError("merge the LoRA adapters before graph export (floodlora export --merge)")
        self.model = model
        self.view_names = tuple(model.views)
        self.output = model.output_index(None, self.view_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        *views, time_, latlon = inputs
        named = dict(zip(self.view_names, views, strict=True))
        logits = self.model.decode(self.model.encode(named, time_, latlon), named)
        return logits[:, self.output : self.output + 1]


def _example(model: nn.Module, tile: int) -> tuple[Tensor, ...]:
    views, t, ll = _probe_inputs(model, tile, seed=1)
    return (*views.values(), t, ll)


def export_torch(model: nn.Module, path: str | Path, tile: int) -> float:
    """torch.export the merged segmentor at batch 1 x `tile`; returns max |diff| vs eager on a probe."""
    from floodlora.io import atomic_path

    wrapper = ExportableSegmentor(model).eval()
    args = _example(model, tile)
    with torch.no_grad():
        program = torch.export.export(wrapper, args)
        diff = float((program.module()(*args) - wrapper(*args)).abs().max())
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp))
    return diff


def export_onnx(model: nn.Module, path: str | Path, tile: int) -> float | None:
    """ONNX export at batch 1 x `tile`; returns max |diff| vs PyTorch under onnxruntime (None without it).

    Uses the TorchScript exporter (no onnxscript dependency). The fused transformer fast path used by
    Clay's wavelength transformer has no ONNX form, so it is switched off during export.
    """
    from floodlora.io import atomic_path

    wrapper = ExportableSegmentor(model).eval()
    args = _example(model, tile)
    names = [*wrapper.view_names, "time", "latlon"]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(tmp),
                dynamo=False,
                input_names=names,
                output_names=["logits"],
                opset_version=17,
            )
    except FloodLoraError:
        raise
    except Exception as err:  # exporter limitations are reported, not hidden behind a traceback
        raise ConfigError(
            f"ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        ) from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {n: a.numpy() for n, a in zip(names, args, strict=True)}
    out = torch.from_numpy(session.run(None, feeds)[0])
    with torch.no_grad():
        return float((out - wrapper(*args)).abs().max())


# --------------------------------------------------------------------------------------------------
# the export command
# --------------------------------------------------------------------------------------------------


@dataclass
class ExportReport:
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    merge_max_abs_diff: float | None = None
    torch_export_max_abs_diff: float | None = None
    onnx_max_abs_diff: float | None = None
    messages: list[str] = field(default_factory=list)


def check_adapter_name(name: str) -> None:
    """`--adapter` is a bare name: the file is always `--out/NAME.safetensors`, never elsewhere."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or name.endswith(".safetensors")
    )
    if bad:
        raise ConfigError(
            f"--adapter {name!r}: give a bare name (no path, no extension, not starting with '.'); "
            "the file is written as --out/NAME.safetensors"
        )


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    merge: bool = False,
    adapter: str | None = None,
    torch_export: bool = False,
    onnx: bool = False,
    tile: int | None = None,
    checkpoint: str | None = None,
    tolerance: float = MERGE_TOLERANCE,
) -> ExportReport:
    """Write the requested artefacts of a run into `out_dir`.

    `merge`: standalone merged model (a run directory loadable without the base checkpoint);
    `adapter`: NAME -> `out_dir/NAME.safetensors` adapter-only file; `torch_export` / `onnx`: graphs of
    the merged model at `tile` (default: the run's crop size), checked against PyTorch.
    """
    import copy

    from floodlora.io import atomic_write_json

    if not (merge or adapter or torch_export or onnx):
        raise ConfigError("nothing to export: pass --merge, --adapter NAME, --torch-export and/or --onnx")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if adapter:
        check_adapter_name(adapter)
    if out_dir.resolve() == run_dir.resolve():
        raise ConfigError(f"{out_dir}: export into a new directory, not into the run itself")
    loaded = load_run(run_dir, checkpoint=checkpoint)
    model, config = loaded.model, loaded.config
    report = ExportReport(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if adapter:
        path = save_adapter(
            out_dir / f"{adapter}.safetensors", model, config, loaded.base, name=adapter,
            presets=loaded.presets, threshold=loaded.best_threshold,
        )  # fmt: skip
        report.written.append(path)
    if not (merge or torch_export or onnx):
        return report
    tile = tile or int(config.data.crop_size)
    strategy = strategy_of(model)
    merged = strategy.standalone(copy.deepcopy(model))
    if strategy.has_adapters:
        probe = min(tile, 64)
        report.merge_max_abs_diff = max_prediction_difference(model, merged, size=probe)
        if report.merge_max_abs_diff > tolerance:
            raise FloodLoraError(
                f"merged model differs from the adapter model by {report.merge_max_abs_diff:.2e} "
                f"(> {tolerance:g}); not writing it"
            )
    else:
        report.messages.append(f"strategy {strategy.name}: no LoRA to merge; exporting the model as is")
    merged.eval()
    info: dict[str, Any] = {
        "source_run": str(run_dir.resolve()),
        "source_strategy": loaded.base["strategy"],
        "base_checkpoint": loaded.base.get("checkpoint"),
        "base_sha256": loaded.base.get("sha256"),
        "merged": strategy.has_adapters,
        "merge_max_abs_diff": report.merge_max_abs_diff,
        "tile": tile,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if merge:
        cfg = copy.deepcopy(config)
        cfg.model.strategy = merged.strategy
        save_run(out_dir, cfg, merged, loaded.presets)
        threshold = {"best_threshold": loaded.best_threshold, "source_run": str(run_dir)}
        atomic_write_json(out_dir / "metrics.json", threshold)
        report.written += [out_dir / "config.yaml", out_dir / "weights.safetensors", out_dir / "base.json"]
    if torch_export:
        report.torch_export_max_abs_diff = export_torch(merged, out_dir / "model.pt2", tile)
        info["torch_export"] = {"file": "model.pt2", "max_abs_diff": report.torch_export_max_abs_diff}
        report.written.append(out_dir / "model.pt2")
    if onnx:
        report.onnx_max_abs_diff = export_onnx(merged, out_dir / "model.onnx", tile)
        info["onnx"] = {"file": "model.onnx", "max_abs_diff": report.onnx_max_abs_diff}
        report.written.append(out_dir / "model.onnx")
        if report.onnx_max_abs_diff is None:
            report.messages.append("onnxruntime is not installed: the ONNX graph was not checked")
    if torch_export or onnx:
        info["inputs"] = {
            "views": list(merged.views),
            "shape": [1, len(merged.bands), tile, tile],
            "bands": list(merged.bands),
            "time": [1, 4],
            "latlon": [1, 4],
            "normalization": config.data.normalization,
        }
    atomic_write_json(out_dir / EXPORT_FILE, info)
    report.written.append(out_dir / EXPORT_FILE)
    return report

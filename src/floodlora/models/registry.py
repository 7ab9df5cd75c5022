"""Named encoder checkpoints: the embedded mini model, Clay v1.0 base, Clay v1.5 large, or a path.

Hub names are looked up in the local Hugging Face cache first and downloaded only when the
network allows; offline, the error says how to pass a local file instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from floodlora.errors import CheckpointError
from floodlora.models.clay import ClayEncoder, ClayEncoderConfig, get_preset, load_clay_encoder


@dataclass(frozen=True)
class CheckpointSpec:
    name: str
    description: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    preset: str | None = None
    normalization: str = "clay-v1.5"  # the preset its pretraining used (floodlora.data.sar.PRESETS)
    latlon_order: str = "lon-lat"  # the location code order its pretraining chips carried


EMBEDDED_FILE = "floodlora-mini.safetensors"

CHECKPOINTS: dict[str, CheckpointSpec] = {
    "embedded": CheckpointSpec(
        "embedded",
        "floodlora-mini: Clay-architecture encoder (dim 192, depth 6) pretrained with Clay's MAE "
        "objective on Sentinel-1; ships inside the package (see MODEL_CARD.md)",
        preset="floodlora-mini",
        normalization="floodlora-mini",  # robust dB statistics (floodlora.data.sar.PRESETS)
        latlon_order="lat-lon",  # pretrained with zero location codes: the order is free; lat first
    ),
    "clay-v1-base": CheckpointSpec(
        "clay-v1-base",
        "Clay v1.0 base (dim 768, depth 12, heads 12) - the reference method's encoder",
        repo_id="made-with-clay/Clay",
        filename="v1/clay-v1-base.ckpt",
        revision="5bfb3c778cf1b51f0ecb6b92395ebdebae893e24",
        preset="clay-v1-base",
        normalization="clay-v1",  # Clay v1.0 was pretrained on linear-power Sentinel-1 RTC
    ),
    "clay-v1.5": CheckpointSpec(
        "clay-v1.5",
        "Clay v1.5 large (dim 1024, depth 24, heads 16)",
        repo_id="made-with-clay/Clay",
        filename="v1.5/clay-v1.5.ckpt",
        preset="clay-v1.5-large",
    ),
}

RANDOM_PREFIX = "random:"
DEFAULT_NORMALIZATION = "clay-v1.5"


def checkpoint_latlon_order(name_or_path: str) -> str:
    """The location-code order ``model.latlon_order: auto`` resolves to for this checkpoint.

    Released Clay checkpoints (named, or a file path) get lon-lat: in Clay's chip-making code
    (stacchip `prechip.py`) the (lat, lon) pair from `normalize_latlon` is unpacked as `lon, lat`,
    so the v1 training chips carried [sin lon, cos lon, sin lat, cos lat] (docs/architecture.md).
    The embedded encoder (pretrained with zero codes) and random encoders get lat-lon.
    """
    spec = CHECKPOINTS.get(name_or_path)
    if spec is not None:
        return spec.latlon_order
    return "lat-lon" if name_or_path.startswith(RANDOM_PREFIX) else "lon-lat"


def checkpoint_normalization(name_or_path: str) -> str:
    """The normalisation preset an encoder was pretrained with, which ``auto`` resolves to.

    Named checkpoints declare theirs (clay-v1-base: Clay v1.0 linear-power statistics; clay-v1.5:
    Clay v1.5 dB statistics; the embedded encoder: its own robust dB statistics, narrower than
    Clay's, so that dB water stands out from land as it does in the 8-bit sources). A file path or
    a random encoder gets the Clay v1.5 preset; pass data.normalization explicitly for a checkpoint
    pretrained otherwise.
    """
    spec = CHECKPOINTS.get(name_or_path)
    return spec.normalization if spec else DEFAULT_NORMALIZATION


def embedded_weights_path() -> Path:
    return Path(str(resources.files("floodlora") / "assets" / EMBEDDED_FILE))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub (or HF_ENDPOINT), instead of minutes of client retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_path(spec: CheckpointSpec) -> Path:
    """The cached file if present, else a download; offline, an error saying how to pass a file."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(
            f"{spec.name}: huggingface_hub is not installed; install floodlora[hub] or pass the "
            f"downloaded .ckpt file path with --checkpoint PATH"
        ) from None
    assert spec.repo_id and spec.filename
    fallback = f"pass --checkpoint /path/to/{Path(spec.filename).name}"
    try:
        return Path(
            hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision, local_files_only=True)
        )
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise CheckpointError(
            f"{spec.name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {fallback}"
        )
    if not _hub_reachable():
        raise CheckpointError(
            f"{spec.name}: not in the local Hugging Face cache and the Hub cannot be reached (no network?); "
            f"download {spec.repo_id}/{spec.filename} where there is network and {fallback}"
        )
    try:
        return Path(hf_hub_download(spec.repo_id, spec.filename, revision=spec.revision))
    except Exception as err:
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{spec.name}: could not download {spec.repo_id}/{spec.filename} ({reason}); {fallback}"
        ) from None


def resolve_checkpoint(name_or_path: str) -> Path | None:
    """The file behind a name or path; None for `random:<preset>` (no file)."""
    if name_or_path.startswith(RANDOM_PREFIX):
        return None
    if name_or_path == "embedded":
        path = embedded_weights_path()
        if not path.is_file():
            raise CheckpointError(
                f"embedded: weights file {path} is missing from this installation; reinstall floodlora"
            )
        return path
    if name_or_path in CHECKPOINTS:
        return _hub_path(CHECKPOINTS[name_or_path])
    path = Path(name_or_path).expanduser()
    if not path.exists():
        known = ", ".join([*CHECKPOINTS, "random:<preset>"])
        raise CheckpointError(f"{name_or_path}: no such checkpoint file or name (names: {known})")
    return path


def load_encoder(name_or_path: str, seed: int = 0) -> ClayEncoder:
    """Load a named or file checkpoint; `random:<preset>` builds a randomly initialised encoder."""
    if name_or_path.startswith(RANDOM_PREFIX):
        import torch

        preset = name_or_path[len(RANDOM_PREFIX) :]
        try:
            config: ClayEncoderConfig = get_preset(preset)
        except KeyError as err:
            raise CheckpointError(str(err.args[0])) from None
        with torch.random.fork_rng(devices=[]):  # deterministic, without touching the caller's RNG
            torch.manual_seed(seed)
            return ClayEncoder(config)
    path = resolve_checkpoint(name_or_path)
    assert path is not None
    return load_clay_encoder(path)


def describe_checkpoint(name_or_path: str) -> str:
    encoder = load_encoder(name_or_path)
    n = sum(p.numel() for p in encoder.parameters())
    spec = CHECKPOINTS.get(name_or_path)
    cfg = encoder.config
    lines = [
        f"checkpoint: {name_or_path}",
        f"  {spec.description}" if spec else f"  file: {resolve_checkpoint(name_or_path) or '(random init)'}",
        f"  dim {cfg.dim}, depth {cfg.depth}, heads {cfg.heads} x {cfg.dim_head}, mlp {cfg.mlp_dim}, "
        f"patch {cfg.patch_size}",
        f"  parameters: {n:,}",
    ]
    return "\n".join(lines)

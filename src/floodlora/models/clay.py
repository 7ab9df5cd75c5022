"""A Clay-compatible ViT encoder, written from the published architecture facts.

The module tree and parameter names mirror Clay's own encoder so that a released Clay Lightning
checkpoint loads key for key, and `ClayEncoder.forward` reproduces Clay's numbers (see
``tests/test_clay.py`` against the reference fixture). Clay specifics kept on purpose:

* a wavelength-conditioned ("dynamic") patch embedding, so any band set (VV, VH, ...) can be fed;
* positional encoding computed from the token grid and the ground sample distance, including the
  reference implementation's frequency scaling quirk (all frequencies lie in gsd * [0.976, 1]);
* the last 8 channels of every token carry the time and lat/lon encodings.

Unlike Clay's code, non-square inputs or sizes that are not a multiple of the patch size are
rejected with a clear error instead of silently misplacing the positional encoding.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from floodlora.errors import CheckpointError, size_text

#: Clay's metadata values for Sentinel-1 RTC: placeholder wavelengths (micrometres in Clay's
#: metadata units, not the physical C-band) that the pretrained patch embedding was conditioned on.
SENTINEL1_WAVELENGTHS: dict[str, float] = {"vv": 3.5, "vh": 4.0}
SENTINEL1_GSD: float = 10.0

WAVE_DIM = 128
NUM_LATENT_TOKENS = 128
METADATA_CHANNELS = 8  # time (4) + latlon (4)


@dataclass(frozen=True)
class ClayEncoderConfig:
    """Size of a Clay encoder; wave_dim and the 128 latent tokens are fixed by Clay."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    dim_head: int = 64
    mlp_ratio: float = 4.0
    patch_size: int = 8

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Named sizes. `base` is Clay v1.0, `large` is Clay v1.5; `tiny`/`small` follow Clay's own
#: smaller presets; `mini` is floodlora's embedded CPU-sized model.
PRESETS: dict[str, ClayEncoderConfig] = {
    "clay-v1-base": ClayEncoderConfig(dim=768, depth=12, heads=12, dim_head=64, mlp_ratio=4.0),
    "clay-v1.5-large": ClayEncoderConfig(dim=1024, depth=24, heads=16, dim_head=64, mlp_ratio=4.0),
    "clay-small": ClayEncoderConfig(dim=384, depth=6, heads=6, dim_head=64, mlp_ratio=2.0),
    "clay-tiny": ClayEncoderConfig(dim=192, depth=6, heads=4, dim_head=48, mlp_ratio=2.0),
    "floodlora-mini": ClayEncoderConfig(dim=192, depth=6, heads=4, dim_head=48, mlp_ratio=4.0),
    "test-micro": ClayEncoderConfig(dim=64, depth=2, heads=4, dim_head=16, mlp_ratio=2.0),
}
PRESET_ALIASES = {
    "base": "clay-v1-base",
    "large": "clay-v1.5-large",
    "small": "clay-small",
    "tiny": "clay-tiny",
}


def get_preset(name: str) -> ClayEncoderConfig:
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise KeyError(f"unknown encoder preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


# --------------------------------------------------------------------------------------------------
# Sinusoidal encodings
# --------------------------------------------------------------------------------------------------


def wavelength_encoding(waves: Tensor, dim: int = WAVE_DIM, temperature: float = 10000.0) -> Tensor:
    """1-D sin/cos encoding of band wavelengths: (C,) -> (C, dim)."""
    half = dim // 2
    omega = torch.arange(half, device=waves.device, dtype=torch.float32) / (half - 1)
    omega = 1.0 / temperature**omega
    angles = waves.float()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def grid_position_encoding(
    grid: int, dim: int, gsd: Tensor | float, device: torch.device, temperature: float = 10000.0
) -> Tensor:
    """2-D sin/cos encoding of a square token grid scaled by gsd: (grid*grid, dim).

    Reproduces Clay's formula exactly, including dividing the exponent by `dim` a second time,
    which squeezes every frequency into gsd * [temperature^(-2/dim), 1].
    """
    rows, cols = torch.meshgrid(
        torch.arange(grid, device=device), torch.arange(grid, device=device), indexing="ij"
    )
    quarter = dim // 4
    omega = torch.arange(quarter, device=device, dtype=torch.float32) / (quarter - 1)
    omega = 1.0 / (temperature ** (2 * omega / dim))
    gsd_t = torch.as_tensor(gsd, dtype=torch.float32, device=device).reshape(-1)[0]
    omega = omega * gsd_t
    col_angles = cols.flatten()[:, None].float() * omega[None, :]
    row_angles = rows.flatten()[:, None].float() * omega[None, :]
    return torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)


# --------------------------------------------------------------------------------------------------
# Dynamic (wavelength-conditioned) patch embedding
# --------------------------------------------------------------------------------------------------


class FCBlock(nn.Module):
    """Residual two-layer MLP refining the wavelength encoding."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(size, size)
        self.l2 = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(self.l2(F.gelu(self.l1(x))))


class WavesTransformer(nn.Module):
    """Generates one patch kernel per band (and a shared bias) from the bands' wavelength codes."""

    def __init__(self, wave_dim: int, out_weights: int, out_bias: int, num_latent_tokens: int) -> None:
        super().__init__()
        self.num_latent_tokens = num_latent_tokens
        self.weight_tokens = nn.Parameter(torch.randn(num_latent_tokens, wave_dim) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, wave_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=wave_dim,
            nhead=4,
            dim_feedforward=2048,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wave_dim, out_weights)
        self.fc_bias = nn.Linear(wave_dim, out_bias)

    def forward(self, wave_codes: Tensor) -> tuple[Tensor, Tensor]:
        tokens = torch.cat([self.weight_tokens, wave_codes, self.bias_token], dim=0)
        out = self.encoder(tokens.unsqueeze(0)).squeeze(0)
        n = self.num_latent_tokens
        weights = self.fc_weight(out[n:-1] + wave_codes)  # residual to the input band tokens
        bias = self.fc_bias(out[-1])
        return weights, bias


class DynamicEmbedding(nn.Module):
    """Patch embedding whose convolution kernel is generated from the input bands' wavelengths."""

    def __init__(self, dim: int, patch_size: int, wave_dim: int = WAVE_DIM) -> None:
        super().__init__()
        self.dim = dim
        self.patch_size = patch_size
        self.wave_dim = wave_dim
        self.weight_generator = WavesTransformer(
            wave_dim, patch_size * patch_size * dim, dim, NUM_LATENT_TOKENS
        )
        self.fclayer = FCBlock(wave_dim)
        self.scaler = 0.01 * 2  # Clay's fixed kernel scale

    def forward(self, pixels: Tensor, waves: Tensor) -> Tensor:
        codes = self.fclayer(wavelength_encoding(waves.to(pixels.device), self.wave_dim))
        weights, bias = self.weight_generator(codes)
        channels = waves.shape[0]
        p = self.patch_size
        kernel = weights.view(channels, self.dim, p, p).permute(1, 0, 2, 3) * self.scaler
        return F.conv2d(pixels, kernel, bias, stride=p)


# --------------------------------------------------------------------------------------------------
# Transformer (pre-norm, fused QKV, names as in Clay)
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x))
        q, k, v = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.gradient_checkpointing = False

    @staticmethod
    def _block(x: Tensor, attn: nn.Module, ff: nn.Module) -> Tensor:
        x = x + attn(x)
        return x + ff(x)

    def forward(self, x: Tensor) -> Tensor:
        for attn, ff in self.layers:  # type: ignore[misc]
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = activation_checkpoint(self._block, x, attn, ff, use_reentrant=False)
            else:
                x = self._block(x, attn, ff)
        return self.norm(x)


class ClayEncoder(nn.Module):
    """Clay's MAE encoder without masking: pixels + metadata -> [B, 1 + L, D] tokens (CLS first)."""

    def __init__(self, config: ClayEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.patch_size = config.patch_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.dim) * 0.02)
        self.patch_embedding = DynamicEmbedding(config.dim, config.patch_size)
        self.transformer = Transformer(
            config.dim, config.depth, config.heads, config.dim_head, config.mlp_dim
        )

    @property
    def gradient_checkpointing(self) -> bool:
        return self.transformer.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self.transformer.gradient_checkpointing = bool(enabled)

    def check_input(self, pixels: Tensor, waves: Tensor) -> None:
        """Reject shapes Clay's encoding cannot place correctly, with a message saying why."""
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be [B, C, H, W], got shape {tuple(pixels.shape)}")
        _, c, h, w = pixels.shape
        p = self.patch_size
        if h != w:
            raise ValueError(
                f"Clay's positional encoding assumes square inputs; got {size_text(h, w)}. "
                "Crop or tile to a square size (floodlora's tiler does this for whole scenes)."
            )
        if h % p:
            raise ValueError(f"input size {h} is not a multiple of the patch size {p}")
        if waves.ndim != 1 or waves.shape[0] != c:
            raise ValueError(f"waves must hold one wavelength per band: {c} bands, got {tuple(waves.shape)}")

    def patch_tokens(self, pixels: Tensor, waves: Tensor) -> Tensor:
        return self.patch_embedding(pixels, waves).flatten(2).transpose(1, 2)

    def add_encodings(self, tokens: Tensor, time: Tensor, latlon: Tensor, gsd: Tensor | float) -> Tensor:
        """Tokens + position/metadata encodings, in the parameters' dtype (fp32 unless the model was
        cast): under autocast the bf16 patch tokens are promoted to fp32 here, as in Clay, so the
        residual stream stays fp32 and only the matmuls run in bf16."""
        b, length, dim = tokens.shape
        grid = math.isqrt(length)
        dtype = self.cls_token.dtype
        pos = grid_position_encoding(grid, dim - METADATA_CHANNELS, gsd, tokens.device).to(dtype)
        meta = torch.cat([time, latlon], dim=-1).to(dtype)  # [B, 8]
        encoding = torch.cat(
            [pos.unsqueeze(0).expand(b, -1, -1), meta[:, None, :].expand(-1, length, -1)], -1
        )
        return tokens + encoding

    def forward(
        self,
        pixels: Tensor,
        time: Tensor | None = None,
        latlon: Tensor | None = None,
        gsd: Tensor | float = SENTINEL1_GSD,
        waves: Tensor | None = None,
    ) -> Tensor:
        b = pixels.shape[0]
        if waves is None:
            raise ValueError("waves (one wavelength per band) is required")
        waves = torch.as_tensor(waves, dtype=torch.float32, device=pixels.device)
        self.check_input(pixels, waves)
        if time is None:
            time = pixels.new_zeros(b, 4)
        if latlon is None:
            latlon = pixels.new_zeros(b, 4)
        tokens = self.patch_tokens(pixels, waves)
        tokens = self.add_encodings(tokens, time, latlon, gsd)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        return self.transformer(tokens)


def band_wavelengths(bands: list[str] | tuple[str, ...]) -> Tensor:
    """Clay's Sentinel-1 wavelength for each band name (vv, vh)."""
    try:
        return torch.tensor([SENTINEL1_WAVELENGTHS[b.lower()] for b in bands], dtype=torch.float32)
    except KeyError as err:
        raise ValueError(f"unknown Sentinel-1 band {err.args[0]!r}; known: vv, vh") from None


# --------------------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------------------

ENCODER_PREFIX = "model.encoder."
_LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.")


def infer_config(state: Mapping[str, Tensor], hints: Mapping[str, Any] | None = None) -> ClayEncoderConfig:
    """Infer the encoder size from tensor shapes; heads come from hints or a known preset width."""
    hints = dict(hints or {})
    try:
        dim = int(state["cls_token"].shape[-1])
        qkv_rows = int(state["transformer.layers.0.0.to_qkv.weight"].shape[0])
        mlp_dim = int(state["transformer.layers.0.1.net.1.weight"].shape[0])
        patch_area = int(state["patch_embedding.weight_generator.fc_weight.weight"].shape[0]) // dim
    except KeyError as err:
        raise CheckpointError(f"missing key {err.args[0]!r}, cannot infer the encoder size") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := _LAYER_RE.match(k)))
    inner = qkv_rows // 3
    patch = math.isqrt(patch_area)
    if "heads" in hints and "dim_head" in hints:
        heads, dim_head = int(hints["heads"]), int(hints["dim_head"])
    else:
        size = str(hints.get("model_size", ""))
        preset = PRESETS.get(PRESET_ALIASES.get(size, size))
        if preset is None:
            preset = next((p for p in PRESETS.values() if p.dim == dim and p.depth == depth), None)
        dim_head = preset.dim_head if preset is not None and preset.dim == dim else 64
        heads = max(1, inner // dim_head)
    if heads * dim_head != inner:
        raise CheckpointError(f"attention width {inner} is not heads x dim_head = {heads} x {dim_head}")
    return ClayEncoderConfig(
        dim=dim, depth=depth, heads=heads, dim_head=dim_head, mlp_ratio=mlp_dim / dim, patch_size=patch
    )


def extract_encoder_state(raw: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """From a loaded checkpoint object, return (encoder state dict without prefix, size hints)."""
    hints: dict[str, Any] = {}
    state = raw
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        state = raw["state_dict"]
        hp = raw.get("hyper_parameters")
        if isinstance(hp, Mapping):
            hints = {k: hp[k] for k in ("model_size", "heads", "dim_head") if k in hp}
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if any(k.startswith(ENCODER_PREFIX) for k in tensors):
        enc = {k[len(ENCODER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
    elif any(k.startswith("encoder.") for k in tensors):
        enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    else:
        enc = dict(tensors)
    return enc, hints


def checkpoint_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_torch_file(path: str | Path) -> Any:
    """`torch.load` with `weights_only=True` (nothing is executed), errors as one-line CheckpointErrors.

    Zip-format files (every `torch.save` since 1.6) are memory-mapped; legacy pickle-format files
    cannot be, so they are read whole. The format is told by the file's first bytes, not by parsing
    error messages.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err.strerror or err})") from None
    is_zip = magic == b"PK\x03\x04"
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # unpickling errors, EOF, bad magic number, bad zip central directory...
        first = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        if is_zip:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({first})") from None
        raise CheckpointError(f"{path}: cannot read checkpoint, not a torch.save file ({first})") from None


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                metadata = fh.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
        hints = {k: int(v) for k, v in metadata.items() if k in ("heads", "dim_head")}
        enc, _ = extract_encoder_state(tensors)
        return enc, hints
    raw = load_torch_file(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict or a Lightning checkpoint, got {type(raw).__name__}"
        )
    return extract_encoder_state(raw)


def load_clay_encoder(
    path: str | Path, config: ClayEncoderConfig | None = None, strict: bool = True
) -> ClayEncoder:
    """Load a Clay encoder from a Lightning `.ckpt` or a safetensors export.

    Keeps only `model.encoder.*` (decoder, teacher, proj and MRL heads are dropped), infers the size
    from the tensors unless `config` is given, and raises `CheckpointError` naming the file and the
    offending keys when the checkpoint is not a Clay encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    state, hints = _read_checkpoint(path)
    if "cls_token" not in state or not any(k.startswith("transformer.layers.") for k in state):
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        raise CheckpointError(
            f"{path}: not a Clay encoder checkpoint "
            f"(no cls_token/transformer.layers.* keys; found {sample}...)"
        )
    cfg = config or infer_config(state, hints)
    encoder = ClayEncoder(cfg)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if strict and (missing or unexpected or wrong_shape):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}")
        if wrong_shape:
            parts.append(f"wrong shape for {', '.join(wrong_shape[:5])}")
        raise CheckpointError(f"{path}: not a matching Clay encoder: {'; '.join(parts)}")
    encoder.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=strict)
    return encoder


def save_encoder_safetensors(
    encoder: ClayEncoder, path: str | Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Write the encoder weights as safetensors with its size in the metadata (atomically)."""
    from safetensors.torch import save_file

    from floodlora.io import atomic_path

    meta = {k: str(v) for k, v in encoder.config.to_dict().items()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)

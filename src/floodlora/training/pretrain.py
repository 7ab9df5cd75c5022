"""Clay-style masked-autoencoder pretraining of a Clay-architecture encoder on Sentinel-1.

This is how floodlora's embedded model is made when Clay's multi-GB weights cannot be downloaded:
the same encoder (wavelength-conditioned patch embedding, VV/VH), ~75% of the patch tokens masked
at random, the encoder run on the visible tokens only, a light transformer decoder that
reconstructs the masked patches, and an L1 loss on the masked patches' normalised pixels (Clay
v1.5 reconstructs raw normalised pixels; v1.0's per-patch `norm_pix_loss` is an option, but on SAR
it leaves mostly unpredictable speckle as the target). Clay's DINO teacher term is left out: there
is no teacher network for SAR to distil from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from floodlora.models.clay import (
    SENTINEL1_GSD,
    ClayEncoder,
    band_wavelengths,
    get_preset,
    grid_position_encoding,
    save_encoder_safetensors,
)
from floodlora.models.clay import Transformer as ViTStack


@dataclass
class PretrainConfig:
    """Pretraining recipe; the defaults build the embedded model in well under an hour on 2 cores."""

    preset: str = "floodlora-mini"
    crop_size: int = 64
    large_crop_size: int | None = 128  # every other batch, at equal pixel count
    mask_ratio: float = 0.75
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = False  # Clay v1.5 setting; per-patch normalisation leaves mostly speckle
    synthetic_scenes: int = 384
    synthetic_size: int = 128
    real_roots: list[str] = field(default_factory=list)
    real_limit: int | None = None
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250


class ClayMAE(nn.Module):
    """Encoder + light decoder for masked-patch reconstruction, one output head per band."""

    def __init__(
        self,
        encoder: ClayEncoder,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        bands: Sequence[str] = ("vv", "vh"),
    ) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        p = encoder.patch_size
        self.enc_to_dec = nn.Linear(encoder.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = ViTStack(
            decoder_dim, decoder_depth, decoder_heads, decoder_dim // decoder_heads, 4 * decoder_dim
        )
        self.to_pixels = nn.ModuleDict({b: nn.Linear(decoder_dim, p * p) for b in bands})
        self.decoder_dim = decoder_dim

    def patchify(self, pixels: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, L, C, P*P] in the encoder's row-major token order."""
        b, c, h, w = pixels.shape
        p = self.encoder.patch_size
        x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c, p * p)

    def forward(
        self, pixels: Tensor, bands: Sequence[str], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return (loss, per-patch reconstruction [B, L, C, P*P], mask [B, L] with 1 = masked)."""
        enc = self.encoder
        waves = band_wavelengths(tuple(bands)).to(pixels.device)
        enc.check_input(pixels, waves)
        b = pixels.shape[0]
        zeros = pixels.new_zeros(b, 4)
        tokens = enc.add_encodings(enc.patch_tokens(pixels, waves), zeros, zeros, SENTINEL1_GSD)
        length = tokens.shape[1]
        n_keep = max(1, round(length * (1 - self.mask_ratio)))
        noise = torch.rand(b, length, device=pixels.device, generator=generator)
        keep = noise.argsort(dim=1)[:, :n_keep]
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        x = torch.cat([enc.cls_token.expand(b, -1, -1), visible], dim=1)
        x = enc.transformer(x)[:, 1:]
        dec = self.mask_token.expand(b, length, -1).clone()
        dec = dec.scatter(1, keep[..., None].expand(-1, -1, self.decoder_dim), self.enc_to_dec(x))
        grid = math.isqrt(length)
        dec = dec + grid_position_encoding(grid, self.decoder_dim, 1.0, pixels.device)
        out = self.decoder(dec)
        pred = torch.stack([self.to_pixels[band](out) for band in bands], dim=2)
        target = self.patchify(pixels)
        if self.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        mask = torch.ones(b, length, device=pixels.device)
        mask.scatter_(1, keep, 0.0)
        per_patch = (pred - target).abs().mean(dim=(-1, -2))
        loss = (per_patch * mask).sum() / mask.sum()
        return loss, pred, mask


# --------------------------------------------------------------------------------------------------
# Image pool: synthetic scenes + optional real images, grouped by band set
# --------------------------------------------------------------------------------------------------


@dataclass
class ImagePool:
    """Normalised single-view images grouped by band tuple (a batch never mixes band sets)."""

    groups: dict[tuple[str, ...], list[np.ndarray]] = field(default_factory=dict)

    def add(self, bands: tuple[str, ...], image: np.ndarray) -> None:
        self.groups.setdefault(bands, []).append(image.astype(np.float32, copy=False))

    def __len__(self) -> int:
        return sum(len(v) for v in self.groups.values())

    def summary(self) -> dict[str, int]:
        return {"+".join(k): len(v) for k, v in self.groups.items()}

    def batches(
        self, batch_size: int, crop: int, seed: int, large_crop: int | None = None
    ) -> Iterator[tuple[tuple[str, ...], Tensor]]:
        """Endless random crops + flips/rot90; each band group is drawn equally often.

        With `large_crop`, every other batch uses that size (and proportionally fewer images), so
        the encoder meets the token positions of the larger grids used when fine-tuning.
        """
        rng = np.random.default_rng(seed)
        keys = [k for k, v in self.groups.items() if v]
        step = 0
        while True:
            key = keys[rng.integers(len(keys))]
            images = self.groups[key]
            size, n = crop, batch_size
            if large_crop and step % 2 == 1:
                size, n = large_crop, max(1, batch_size * crop * crop // (large_crop * large_crop))
            step += 1
            fitting = [im for im in images if min(im.shape[1:]) >= size]
            if not fitting:
                size = min(min(im.shape[1:]) for im in images) // 8 * 8
                fitting = images
            images = fitting
            batch = []
            for idx in rng.integers(0, len(images), size=n):
                img = images[idx]
                _, h, w = img.shape
                top = int(rng.integers(0, h - size + 1))
                left = int(rng.integers(0, w - size + 1))
                patch = img[:, top : top + size, left : left + size]
                if rng.random() < 0.5:
                    patch = patch[:, :, ::-1]
                patch = np.rot90(patch, k=int(rng.integers(0, 4)), axes=(1, 2))
                batch.append(np.ascontiguousarray(patch))
            yield key, torch.from_numpy(np.stack(batch))


def build_pool(cfg: PretrainConfig, progress: Callable[[str], None] | None = None) -> ImagePool:
    """Every view of every synthetic scene (and of the real chips, labels unused) becomes an image."""
    from floodlora.data.sar import get_preset as get_norm_preset
    from floodlora.data.sar import normalize_sample
    from floodlora.data.synthetic import generate_scene

    pool = ImagePool()
    for i in range(cfg.synthetic_scenes):
        domain = "ood" if i % 4 == 3 else "in"  # some arid/urban terrain too; labels are never used
        sample = generate_scene(cfg.synthetic_size, domain=domain, seed=cfg.seed * 100_003 + i)
        bands = ("vv", "vh")
        # The shipped weights saw dB scenes under Clay v1.5's constants (MODEL_CARD.md).
        norm = normalize_sample(sample, bands, get_norm_preset("auto", sample.meta.units, base="clay-v1.5"))
        for arr in norm.values():
            pool.add(bands, np.nan_to_num(arr))
    if progress:
        progress(f"synthetic images: {len(pool)}")
    if cfg.real_roots:
        from floodlora.data.sar import compute_stats
        from floodlora.data.sources import discover, read_sample

        refs = discover([Path(r) for r in cfg.real_roots])
        if cfg.real_limit is not None:
            refs = refs[: cfg.real_limit]
        by_format: dict[str, list] = {}
        for ref in refs:
            by_format.setdefault(ref.format, []).append(ref)
        for fmt_refs in by_format.values():
            # 8-bit rescaled sources have no physical units: normalise each with its own statistics.
            stats = compute_stats(fmt_refs) if fmt_refs[0].units == "scaled-uint8" else None
            for ref in fmt_refs:
                sample = read_sample(ref)
                bands = tuple(b for b in ("vv", "vh") if all(b in v for v in sample.views.values()))
                if not bands or min(sample.valid.shape) < cfg.crop_size:
                    continue
                preset = get_norm_preset("auto", sample.meta.units, stats=stats, base="clay-v1.5")
                for arr in normalize_sample(sample, bands, preset).values():
                    arr = np.where(sample.valid[None], arr, 0.0)
                    pool.add(bands, np.clip(np.nan_to_num(arr), -6, 6))
        if progress:
            progress(f"with real images: {pool.summary()}")
    return pool


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def pretrain(
    cfg: PretrainConfig,
    out_dir: str | Path,
    pool: ImagePool | None = None,
    resume: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Run MAE pretraining; resumable from `out_dir/pretrain_state.pt`; returns a summary dict.

    Writes `encoder.safetensors`, `loss_curve.csv`, `loss_curve.png` and `pretrain.json`.
    """
    from floodlora.io import atomic_path, atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Subnormal floats (tiny Adam moments, decaying gradients) run ~100x slower on x86 CPUs.
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    encoder = ClayEncoder(get_preset(cfg.preset))
    mae = ClayMAE(
        encoder, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads, cfg.mask_ratio, cfg.norm_pix_loss
    )
    opt = torch.optim.AdamW(mae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    state_path = out / "pretrain_state.pt"
    start, history, elapsed_before = 0, [], 0.0
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        mae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        history = [(int(s), float(v)) for s, v in state["history"].tolist()]
        elapsed_before = float(state["elapsed"])
    if pool is None:
        pool = build_pool(cfg)
    if len(pool) == 0:
        from floodlora.errors import DataError

        raise DataError("pretraining image pool is empty")
    batches = pool.batches(
        cfg.batch_size, cfg.crop_size, seed=cfg.seed + start, large_crop=cfg.large_crop_size
    )
    gen = torch.Generator().manual_seed(cfg.seed + 7 * start)
    t0 = time.perf_counter()
    mae.train()

    def save_state(step: int) -> None:
        payload = {
            "model": mae.state_dict(),
            "optimizer": opt.state_dict(),
            "step": torch.tensor(step),
            "history": torch.tensor(history, dtype=torch.float64).reshape(-1, 2),
            "elapsed": torch.tensor(elapsed_before + time.perf_counter() - t0),
        }
        with atomic_path(state_path) as tmp:
            torch.save(payload, tmp)

    running: list[float] = []
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        bands, pixels = next(batches)
        loss, _, _ = mae(pixels, bands, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(mae.parameters(), 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            history.append((step + 1, float(np.mean(running))))
            running = []
        if on_step is not None:
            on_step(step + 1, loss.item())
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_state(step + 1)
    elapsed = elapsed_before + time.perf_counter() - t0
    save_state(cfg.steps)
    save_encoder_safetensors(
        encoder, out / "encoder.safetensors", metadata={"pretrain": "floodlora clay-mae"}
    )
    atomic_write_text(out / "loss_curve.csv", "step,loss\n" + "".join(f"{s},{v:.6f}\n" for s, v in history))
    _plot_curve(history, out / "loss_curve.png")
    summary = {
        "config": asdict(cfg),
        "steps": cfg.steps,
        "wall_seconds": round(elapsed, 1),
        "final_loss": history[-1][1] if history else None,
        "first_loss": history[0][1] if history else None,
        "pool": pool.summary(),
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
    }
    atomic_write_json(out / "pretrain.json", summary)
    return summary


def _plot_curve(history: Sequence[tuple[int, float]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from floodlora.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    steps, losses = zip(*history, strict=True)
    ax.plot(steps, losses, color="#1f6fb4")
    ax.set_xlabel("step")
    ax.set_ylabel("masked-patch L1 (normalised pixels)")
    ax.set_title("MAE pretraining loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def reconstruction_loss(mae: ClayMAE, pixels: Tensor, bands: Sequence[str], seed: int = 0) -> float:
    """Masked-patch loss on a fixed batch with a fixed mask: comparable before and after training."""
    mae.eval()
    with torch.no_grad():
        loss, _, _ = mae(pixels, bands, generator=torch.Generator().manual_seed(seed))
    return float(loss)

"""Rebuild floodlora's embedded encoder and its model card from scratch.

    python scripts/build_embedded_model.py --out runs/embedded-build

Pretrains the `floodlora-mini` Clay-architecture encoder with the MAE objective on synthetic
Sentinel-1 scenes plus the images of every real chip under ../shared/data/real (labels unused; real
images make up most of the pool), measures a water/land linear probe on real chips against a
randomly initialised encoder of the same size, and writes
`src/floodlora/assets/floodlora-mini.safetensors`, `src/floodlora/assets/MODEL_CARD.md` and
`docs/images/pretrain_loss.png`. Resumable: rerunning continues the pretraining state in --out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "real"
PRETRAIN_REAL_ROOTS = [
    SHARED / "ombria",
    SHARED / "etci2021",
    SHARED / "c2s_ms_floods",
    SHARED / "sen1floods11",
    SHARED / "unlabeled",
]


def probe_scores(encoder_path: Path, preset: str, n_scenes: int, seed: int) -> dict[str, dict[str, float]]:
    """Linear-probe water/land accuracy of patch tokens: pretrained vs random init, same size."""
    from floodlora.analysis.embeddings import linear_probe, patch_embeddings
    from floodlora.data.synthetic import generate_scene
    from floodlora.models.registry import load_encoder

    # Label all post-event water (permanent + flood): the question is whether tokens separate water.
    scenes = [generate_scene(128, "in", 900_000 + seed + i, target="water") for i in range(n_scenes)]
    scenes += [generate_scene(128, "ood", 950_000 + seed + i, target="water") for i in range(n_scenes // 2)]
    results: dict[str, dict[str, float]] = {}
    for name, spec in (("pretrained", str(encoder_path)), ("random init", f"random:{preset}")):
        encoder = load_encoder(spec).eval()
        feats, labels, _ = patch_embeddings(encoder, scenes, bands=("vv", "vh"), view="post")
        results[name] = linear_probe(feats, labels, seed=seed)
    from floodlora.analysis.embeddings import real_probe_chips

    for label, chips, bands in real_probe_chips(SHARED):
        for name, spec in (("pretrained", str(encoder_path)), ("random init", f"random:{preset}")):
            encoder = load_encoder(spec).eval()
            feats, labels, _ = patch_embeddings(encoder, chips, bands=bands, view="post", crop=128)
            results[f"{name} ({label})"] = linear_probe(feats, labels, seed=seed)
    return results


def write_card(out: Path, summary: dict, probe: dict, sha: str, size_mb: float, command: str) -> str:
    cfg = summary["config"]
    rows = "\n".join(
        f"| {name} | {r['accuracy'] * 100:.1f} | {r['balanced_accuracy'] * 100:.1f} | {r['chance'] * 100:.1f} "
        f"| {r['n_train']:,} / {r['n_test']:,} |"
        for name, r in probe.items()
    )
    pool = ", ".join(f"{k}: {v:,}" for k, v in summary["pool"].items())
    return f"""# floodlora-mini: the embedded encoder

floodlora's default `--checkpoint embedded`. A Clay-architecture encoder (the same module tree and
parameter names as Clay v1.0/v1.5, so every floodlora code path that serves the real Clay weights
serves this one), pretrained here on 2 CPU cores so that the toolkit, its tests and its demo work
without network access. It is a small stand-in for Clay, not a replacement: for real flood mapping
load `clay-v1-base` or `clay-v1.5` (see README).

| | |
|---|---|
| architecture | Clay encoder: dim {cfg_dim(cfg)}, depth 6, 4 heads x 48, MLP x4, patch 8, wavelength-conditioned patch embedding (128 latent tokens), sin/cos position + time + lat/lon encodings |
| parameters | {summary["encoder_parameters"]:,} ({size_mb:.1f} MB as float32 safetensors) |
| file | `floodlora-mini.safetensors`, sha256 `{sha}` |
| objective | Clay MAE: {cfg["mask_ratio"]:.0%} of patch tokens masked, encoder on visible tokens, {cfg["decoder_depth"]}-layer transformer decoder (width {cfg["decoder_dim"]}), L1 on the normalised pixels of masked patches ({"per-patch normalised, Clay v1.0 style" if cfg["norm_pix_loss"] else "Clay v1.5 style, no per-patch normalisation"}); no teacher term |
| data | {cfg["synthetic_scenes"]} synthetic Sentinel-1 scenes ({cfg["synthetic_size"]} px, pre and post views, VV+VH; 1 in 4 from the `ood` domain) and the images of every real chip under `shared/data/real` (labels never used): OMBRIA (OmbriaS1 train and test, pre and post, VV), OMBRIA 2021 FRANCE (pre and post, VV), ETCI 2021 Nebraska and North Alabama (post, VV+VH), the three labelled C2S-MS Floods chips, the Sen1Floods11 Spain chip and the unlabelled C2S-MS chip (post, VV+VH). Copernicus Sentinel data (ESA), open with attribution; the datasets' labels were not used. Image pool: {pool} |
| recipe | {cfg["steps"]:,} steps, batch {cfg["batch_size"]}, random {cfg["crop_size"]} px crops (every other batch {cfg["large_crop_size"]} px) with flips/rot90, AdamW lr {cfg["lr"]} (warm-up {cfg["warmup_steps"]}, cosine), weight decay {cfg["weight_decay"]}, seed {cfg["seed"]} |
| wall time | {summary["wall_seconds"] / 60:.1f} min on 2 CPU cores (fp32) |
| loss | {summary["first_loss"]:.4f} (first {cfg["log_every"]} steps) -> {summary["final_loss"]:.4f} (last {cfg["log_every"]}) |
| normalisation | pretraining: dB sources under Clay v1.5 Sentinel-1 constants, 8-bit rescaled sources under per-source statistics. Fine-tuning (`normalization: auto`): dB data under the `floodlora-mini` preset, robust statistics of the calibrated pretraining images (docs/data.md): under Clay's wider spread, a run trained on the 8-bit sources found almost none of the water in dB chips (docs/quality.md) |

Exact command (reruns resume from `--out`):

```bash
{command}
```

![pretraining loss](../../../docs/images/pretrain_loss.png)

## Does the encoder separate water from land?

Linear probe (logistic regression on standardised patch tokens, class-balanced, 30% of patches
held out) predicting the majority label (water vs dry land) of each 8x8 patch of the post-event
view, against a randomly initialised encoder of the same size. Synthetic rows: held-out scenes
(seeds never seen in pretraining, in and ood domains; permanent and flood water both count as
water). Real rows: 40 OMBRIA test chips (VV) and 40 ETCI chips that hold water (VV+VH), centre
128 px; their images were in the pretraining pool, their labels never, and the probe is scored on
patches it was not fitted on. `tests/test_embedded.py` recomputes the real rows.

| encoder | accuracy % | balanced accuracy % | majority-class chance % | patches train / test |
|---|---:|---:|---:|---|
{rows}

Produced by `scripts/build_embedded_model.py`; the numbers above are rewritten on every rebuild.
"""


def cfg_dim(cfg: dict) -> int:
    from floodlora.models.clay import get_preset

    return get_preset(cfg["preset"]).dim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/embedded-build")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--synthetic", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-real", action="store_true", help="synthetic scenes only")
    parser.add_argument("--probe-scenes", type=int, default=24)
    parser.add_argument("--install", action="store_true", help="copy the weights and card into the package")
    args = parser.parse_args(argv)

    from floodlora.models.clay import checkpoint_sha256
    from floodlora.training.pretrain import PretrainConfig, build_pool, pretrain

    out = Path(args.out)
    real = [] if args.no_real else [str(p) for p in PRETRAIN_REAL_ROOTS if p.is_dir()]
    cfg = PretrainConfig(
        crop_size=args.crop,
        steps=args.steps,
        batch_size=args.batch_size,
        synthetic_scenes=args.synthetic,
        real_roots=real,
        seed=args.seed,
        log_every=50,
    )
    t0 = time.perf_counter()
    pool = build_pool(cfg, progress=lambda m: print(m, flush=True))
    print(f"pool built in {time.perf_counter() - t0:.0f} s: {pool.summary()}", flush=True)

    def report(step: int, loss: float) -> None:
        if step % 100 == 0:
            print(f"step {step} loss {loss:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = pretrain(cfg, out, pool=pool, on_step=report)
    encoder_path = out / "encoder.safetensors"
    probe = probe_scores(encoder_path, cfg.preset, args.probe_scenes, args.seed)
    for name, r in probe.items():
        print(f"probe {name}: accuracy {r['accuracy']:.3f} balanced {r['balanced_accuracy']:.3f}", flush=True)
    sha = checkpoint_sha256(encoder_path)
    size_mb = encoder_path.stat().st_size / 1e6
    command = " ".join(["python", "scripts/build_embedded_model.py", *(argv or sys.argv[1:])])
    card = write_card(out, summary, probe, sha, size_mb, command)
    (out / "MODEL_CARD.md").write_text(card)
    np.save(out / "probe.npy", probe, allow_pickle=True)
    if args.install:
        assets = REPO / "src" / "floodlora" / "assets"
        shutil.copy(encoder_path, assets / "floodlora-mini.safetensors")
        (assets / "MODEL_CARD.md").write_text(card)
        shutil.copy(out / "loss_curve.png", REPO / "docs" / "images" / "pretrain_loss.png")
        print(f"installed into {assets}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

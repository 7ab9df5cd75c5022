"""Where a trained run's logits come from: the encoder's token path, the pixel stem, the pixel prior.

Why: a `hires` run adds a full-resolution pixel stem and a fitted pixel prior to the reference
token decoder. If the token decoder's output goes flat during training, the logits no longer
depend on the encoder, and LoRA, full fine-tuning and a frozen encoder can only differ through
noise. This measures, on a run's held-out chips, how much each part moves the logits inside a chip:
the spatial standard deviation of the output logit with all parts, and of the change when one part
is removed (its features replaced by zeros; the prior left out). Results go to
``quality-explorations.json`` (key ``logit_sources``) and the exploration tables of
``docs/quality.md``.

    python benchmarks/quality.py --worker ombria-test recipe --out-dir RUN
    python benchmarks/logit_sources.py "recipe=ombria-test=RUN" ["hires-bn=ombria-test=RUN2" ...]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, set_json_key
from quality import GROUPS


@contextlib.contextmanager
def _zeroed(modules: Any) -> Iterator[None]:
    """Replace the outputs of `modules` by zeros while the block runs."""
    hooks = [m.register_forward_hook(lambda _m, _i, out: out * 0) for m in modules]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _output_logits(model: Any, views: Any, time: Any, latlon: Any, kinds: Any, present: list[str]) -> Any:
    """Each chip's logit of its own label kind, `[B, H, W]`."""
    out = model.forward_all(views, time, latlon)
    return model.select_outputs(out, kinds, present)[:, 0]


def measure(run: Path, split: str, max_chips: int = 64, roots: list[Path] | None = None) -> dict[str, Any]:
    """Mean over `split`'s chips of the spatial std of the output logit, and of each part's share of it.

    `roots` replaces the run's data roots (the same chips elsewhere).
    """
    import torch

    from floodlora.models.inputs import model_inputs
    from floodlora.models.registry import checkpoint_normalization
    from floodlora.runs import load_run
    from floodlora.training.engine import _eval_loader

    loaded = load_run(run)
    model = loaded.model.eval()
    base_norm = checkpoint_normalization(loaded.base.get("checkpoint", loaded.config.model.checkpoint))
    data = loaded.config.data
    if roots:
        data.roots = [str(r) for r in roots]
    loader = _eval_loader(data, split, loaded.presets or None, base_norm)
    sums = {"logit": 0.0, "token_path": 0.0, "pixel_stem": 0.0, "pixel_prior": 0.0}
    n = 0
    with torch.no_grad():
        for batch in loader:
            views, time, latlon = model_inputs(model, batch)
            present = [v for v in views if views[v] is not None]
            kinds = batch.get("label_kind")

            args = (model, views, time, latlon, kinds, present)
            full = _output_logits(*args)
            with _zeroed(model.decoders):
                no_tokens = _output_logits(*args)
            with _zeroed(model.stems):
                no_stem = _output_logits(*args)
            prior, model.prior = model.prior, None
            try:
                no_prior = _output_logits(*args)
            finally:
                model.prior = prior
            for key, value in (
                ("logit", full),
                ("token_path", full - no_tokens),
                ("pixel_stem", full - no_stem),
                ("pixel_prior", full - no_prior),
            ):
                sums[key] += float(value.flatten(1).std(dim=1).sum())
            n += full.shape[0]
            if n >= max_chips:
                break
    means = {k: v / n for k, v in sums.items()}
    return {
        "decoder": model.decoder_kind,
        "strategy": loaded.config.model.strategy,
        "n_chips": n,
        "logit_spatial_std": means["logit"],
        "share": {k: means[k] / means["logit"] for k in ("token_path", "pixel_stem", "pixel_prior")},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "runs", nargs="+", help="LABEL=GROUP=RUN_DIR: each run was trained without GROUP and is scored on it"
    )
    p.add_argument(
        "--split", default=None, help="the split to score (default: where benchmarks/quality.py scores GROUP)"
    )
    p.add_argument("--max-chips", type=int, default=64)
    p.add_argument("--data", type=Path, action="append", default=[], help="chip roots (default: each run's)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "quality-explorations.json")
    args = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    known = {g.name: g for g in GROUPS}
    rows = []
    for spec in args.runs:
        parts = spec.split("=", 2)
        if len(parts) != 3 or not all(parts):
            raise SystemExit(f"{spec}: expected LABEL=GROUP=RUN_DIR")
        label, group, path = parts
        if group not in known:
            raise SystemExit(f"{spec}: unknown group {group!r}; one of {', '.join(known)}")
        split = args.split or ("test" if known[group].native_test else "ood")
        row = {
            "label": label,
            "held_out": group,
            **measure(Path(path), split, args.max_chips, args.data),
        }
        rows.append(row)
        share = row["share"]
        print(
            f"{label:30s} logit std {row['logit_spatial_std']:.3f}  tokens {share['token_path']:.3f}  "
            f"stem {share['pixel_stem']:.3f}  prior {share['pixel_prior']:.3f}",
            flush=True,
        )
    result = {
        "command": "python benchmarks/logit_sources.py LABEL=GROUP=RUN ...  (each RUN: python "
        "benchmarks/quality.py --worker GROUP ROW --out-dir RUN [--budget ...], the benchmark budget)",
        "rows": rows,
    }
    set_json_key(args.json, "logit_sources", result)
    return result


if __name__ == "__main__":
    main()

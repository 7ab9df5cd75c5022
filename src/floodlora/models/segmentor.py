"""Flood segmentor: every view through one shared Clay encoder, a decoder per view, fused logits.

Missing views. A model declares the views it was built for. At prediction time a declared view
may be absent (a responder often has only the post-event pass): its decoder features are set to
zero, which is exactly what `view_dropout` exposes the fusion layer to during training, and its
name is recorded in `last_missing_views`. Passing a view the model was not built for is an error.

Label kinds. Public flood datasets label different things: new flood water (judged against a
pre-event view) or all water in the post-event image. Trained together through one output, the
two disagree on every permanent lake and river and the model learns neither. A model may therefore
have one output channel per label kind (``outputs``); each training chip supervises the channel of
its own kind, the encoder and decoder are shared, and `target` picks the channel that `forward`
returns (``None``: ``flood`` when a pre-event view is given, else ``water``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from floodlora.config import LABEL_KINDS
from floodlora.models.clay import SENTINEL1_GSD, ClayEncoder, band_wavelengths
from floodlora.models.decoder import (
    DECODER_SPECS,
    DECODERS,
    FusionHead,
    HiResFusionHead,
    PixelStem,
    ViewDecoder,
    default_decoder_channels,
)
from floodlora.models.prior import build_prior, check_prior_features

VIEW_NAMES = ("pre", "post", "pre_asc", "pre_desc", "post_asc", "post_desc")
BAND_NAMES = ("vv", "vh")

MetaInput = Tensor | Mapping[str, Tensor] | None


def reorder_latlon(latlon: Tensor, order: str) -> Tensor:
    """Lat-first location codes `[N, 4]` in the encoder's order: lat-lon, lon-lat or zeros."""
    if order == "lat-lon":
        return latlon
    if order == "lon-lat":
        return latlon[:, [2, 3, 0, 1]]
    if order == "zeros":
        return torch.zeros_like(latlon)
    raise ValueError(f"unknown latlon order {order!r}; choose lat-lon, lon-lat or zeros")


class FloodSegmentor(nn.Module):
    """views -> encoder (views folded into the batch) -> per-view decoders -> concat -> logits."""

    def __init__(
        self,
        encoder: ClayEncoder | nn.Module,
        views: Sequence[str] = ("pre", "post"),
        bands: Sequence[str] = ("vv", "vh"),
        decoder_channels: Sequence[int] | None = None,
        share_decoder: bool = False,
        view_dropout: float = 0.0,
        pixel_dropout: float = 0.0,
        gsd: float = SENTINEL1_GSD,
        decoder: str = "paper",
        outputs: Sequence[str] = ("flood",),
        pixel_prior: bool = False,
        prior_features: str = "pixel",
    ) -> None:
        super().__init__()
        bad_outputs = [o for o in outputs if o not in LABEL_KINDS]
        if bad_outputs or not outputs or len(set(outputs)) != len(outputs):
            raise ValueError(
                f"outputs must be distinct label kinds out of {', '.join(LABEL_KINDS)}, got {list(outputs)}"
            )
        self.outputs = tuple(outputs)
        self.target: str | None = None  # None: chosen from the views given (see forward)
        unknown = [v for v in views if v not in VIEW_NAMES]
        if unknown or not views:
            raise ValueError(f"unknown view(s) {unknown}; views are any of {', '.join(VIEW_NAMES)}")
        bad_bands = [b for b in bands if b not in BAND_NAMES]
        if bad_bands or not bands:
            raise ValueError(f"unknown band(s) {bad_bands}; bands are any of {', '.join(BAND_NAMES)}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        if not 0.0 <= view_dropout < 1.0:
            raise ValueError(f"view_dropout must be in [0, 1), got {view_dropout}")
        self.encoder = encoder
        self.views = tuple(views)
        self.bands = tuple(bands)
        self.gsd = gsd
        self.view_dropout = view_dropout
        if not 0.0 <= pixel_dropout < 1.0:
            raise ValueError(f"pixel_dropout must be in [0, 1), got {pixel_dropout}")
        self.pixel_dropout = pixel_dropout
        dim = self.encoder_dim
        patch = self.patch_size
        spec = DECODER_SPECS[decoder]
        channels = tuple(decoder_channels) if decoder_channels else default_decoder_channels(dim)
        self.decoder_channels = channels
        self.share_decoder = share_decoder
        n_decoders = 1 if share_decoder else len(self.views)
        self.decoders = nn.ModuleList(
            ViewDecoder(dim, channels, patch, norm=spec.token_norm) for _ in range(n_decoders)
        )
        self.decoder_kind = decoder
        self.stems = nn.ModuleList(
            PixelStem(len(self.bands), context=spec.stem_context, otsu=spec.stem_otsu)
            for _ in range(n_decoders if spec.pixel_stem else 0)
        )
        self.head: nn.Module = (
            HiResFusionHead(len(self.views), channels[-1], self.stems[0].out_channels, len(self.outputs))
            if spec.pixel_stem
            else FusionHead(len(self.views), channels[-1], len(self.outputs))
        )
        # A per-pixel logistic term on the normalised inputs, added to the logits: the classical
        # threshold as part of the model. floodlora.training.pixel_prior fits it on the training
        # chips before training, so the network starts where a fitted threshold ends and learns
        # the context a threshold cannot see. Zero (no effect) until fitted.
        # `prior_features: context` (or `context-quantiles`) makes it a small MLP over each pixel's
        # neighbourhood and tile (floodlora.models.prior).
        self.prior: nn.Module | None = None
        self.prior_kind = prior_features
        check_prior_features(prior_features)
        if pixel_prior:
            self.prior = build_prior(prior_features, len(self.views) * len(self.bands), len(self.outputs))
        self.register_buffer("waves", band_wavelengths(self.bands), persistent=False)
        self.last_missing_views: tuple[str, ...] = ()
        self._warned_missing: set[tuple[str, ...]] = set()
        self.strategy = "full"  # set by floodlora.models.strategies.apply_strategy
        # Inputs carry lat first ([sin lat, cos lat, sin lon, cos lon]); the encoder gets the order
        # its checkpoint was pretrained with (floodlora.models.registry.checkpoint_latlon_order).
        self.latlon_order = "lat-lon"

    def train(self, mode: bool = True) -> FloodSegmentor:
        """Switch modes; a frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.strategy == "frozen":
            self.encoder.eval()
        return self

    # -- encoder access (works for a plain ClayEncoder and a peft-wrapped one) ---------------------

    @property
    def clay_encoder(self) -> ClayEncoder:
        enc = self.encoder
        while not isinstance(enc, ClayEncoder):
            if hasattr(enc, "get_base_model"):
                enc = enc.get_base_model()
            elif hasattr(enc, "model"):
                enc = enc.model
            else:  # pragma: no cover - defensive
                raise TypeError(f"cannot find the Clay encoder inside {type(self.encoder).__name__}")
        return enc

    @property
    def encoder_dim(self) -> int:
        return self.clay_encoder.dim

    @property
    def patch_size(self) -> int:
        return self.clay_encoder.patch_size

    # -- forward ------------------------------------------------------------------------------------

    def _present_views(self, views: Mapping[str, Tensor]) -> list[str]:
        extra = sorted(set(views) - set(self.views))
        if extra:
            raise ValueError(f"view(s) {extra} were not declared by this model (it has {list(self.views)})")
        present = [v for v in self.views if v in views and views[v] is not None]
        if not present:
            raise ValueError(f"no input view given; this model expects {list(self.views)}")
        return present

    @staticmethod
    def _per_view(meta: MetaInput, view: str, batch: int, ref: Tensor) -> Tensor:
        if meta is None:
            return ref.new_zeros(batch, 4)
        if isinstance(meta, Mapping):
            value = meta.get(view)
            return ref.new_zeros(batch, 4) if value is None else value.to(ref)
        return meta.to(ref)

    def encode(
        self, views: Mapping[str, Tensor], time: MetaInput = None, latlon: MetaInput = None
    ) -> dict[str, Tensor]:
        """Patch-token grids `[B, D, H/p, W/p]` for each present view, one encoder pass for all."""
        present = self._present_views(views)
        first = views[present[0]]
        b, c, h, w = first.shape
        if c != len(self.bands):
            raise ValueError(
                f"view {present[0]!r} has {c} channels, the model expects bands {list(self.bands)}"
            )
        for v in present[1:]:
            if views[v].shape != first.shape:
                raise ValueError(
                    f"view {v!r} has shape {tuple(views[v].shape)}, {present[0]!r} has {tuple(first.shape)}"
                )
        pixels = torch.cat([views[v] for v in present], dim=0)
        time_all = torch.cat([self._per_view(time, v, b, first) for v in present], dim=0)
        latlon_all = reorder_latlon(
            torch.cat([self._per_view(latlon, v, b, first) for v in present], dim=0), self.latlon_order
        )
        tokens = self.encoder(pixels, time_all, latlon_all, self.gsd, self.waves)
        p = self.patch_size
        grid = tokens[:, 1:].transpose(1, 2).reshape(len(present) * b, -1, h // p, w // p)
        return dict(zip(present, grid.chunk(len(present), dim=0), strict=True))

    def decode(self, features: Mapping[str, Tensor], pixels: Mapping[str, Tensor] | None = None) -> Tensor:
        """Per-view decoders + fusion from token grids; absent views contribute zeros.

        The ``hires`` decoder also needs the normalised input `pixels` of the present views.
        """
        ref = next(iter(features.values()))
        b, _, gh, gw = ref.shape
        p = self.patch_size
        if (DECODER_SPECS[self.decoder_kind].pixel_stem or self.prior is not None) and (
            pixels is None or any(v not in pixels for v in features)
        ):
            raise ValueError("the hires decoder (or pixel prior) needs the input pixels of each present view")
        drop = self._sample_view_dropout(list(features), b, ref)
        # Chips whose pixel stem and prior are left out this step (training only): the token path
        # must then predict alone, so it stays part of the model.
        pixel_keep = None
        if self.training and self.pixel_dropout > 0:
            pixel_keep = (
                (torch.rand(b, device=ref.device) >= self.pixel_dropout).to(ref.dtype).view(b, 1, 1, 1)
            )
        outputs = []
        for i, view in enumerate(self.views):
            k = 0 if self.share_decoder else i
            decoder = self.decoders[k]
            parts = [decoder.out_channels] + ([self.stems[k].out_channels] if self.stems else [])
            if view in features:
                out = decoder(features[view])
                if self.stems:
                    assert pixels is not None
                    stem = self.stems[k](pixels[view].to(out.dtype))
                    out = torch.cat([out, stem if pixel_keep is None else stem * pixel_keep], dim=1)
                if drop is not None:
                    out = out * drop[view].view(b, 1, 1, 1)
            else:
                out = ref.new_zeros(b, sum(parts), gh * p, gw * p)
            outputs.append(out)
        logits = self.head(torch.cat(outputs, dim=1))
        if self.prior is not None:
            assert pixels is not None
            prior = self.prior(self.prior_inputs(pixels, b, gh * p, gw * p, ref).to(logits.dtype))
            logits = logits + (prior if pixel_keep is None else prior * pixel_keep)
        return logits

    def prior_inputs(self, pixels: Mapping[str, Tensor], batch: int, h: int, w: int, ref: Tensor) -> Tensor:
        """The pixel prior's input: every declared view's bands in model order, zeros for absent views."""
        c = len(self.bands)
        parts = [
            pixels[v] if v in pixels and pixels[v] is not None else ref.new_zeros(batch, c, h, w)
            for v in self.views
        ]
        return torch.cat([x.to(ref.dtype) for x in parts], dim=1)

    def _sample_view_dropout(self, present: list[str], batch: int, ref: Tensor) -> dict[str, Tensor] | None:
        """Per sample, drop whole views at rate `view_dropout`, always keeping at least one."""
        if not (self.training and self.view_dropout > 0 and len(present) > 1):
            return None
        keep = torch.rand(batch, len(present), device=ref.device) >= self.view_dropout
        none_kept = ~keep.any(dim=1)
        if none_kept.any():
            rescue = torch.randint(len(present), (batch,), device=ref.device)
            keep[none_kept, rescue[none_kept]] = True
        return {v: keep[:, i].to(ref.dtype) for i, v in enumerate(present)}

    def output_index(self, kind: str | None, views: Sequence[str] = ()) -> int:
        """The channel for label kind `kind`; None: `target`, else flood with a pre view, else water.

        A single-output model answers every kind with its one channel (it was trained that way).
        """
        if len(self.outputs) == 1:
            return 0
        kind = kind or self.target
        if kind is None:
            has_pre = any(v.startswith("pre") for v in views)
            kind = "flood" if has_pre or "water" not in self.outputs else "water"
        if kind not in self.outputs:
            raise ValueError(f"this model has no {kind!r} output (it has {list(self.outputs)})")
        return self.outputs.index(kind)

    def select_outputs(
        self, logits: Tensor, kinds: Sequence[str | None] | None, views: Sequence[str]
    ) -> Tensor:
        """Per sample, its label kind's channel of all-output logits `[B, K, H, W]` -> `[B, 1, H, W]`."""
        if logits.shape[1] == 1:
            return logits
        if kinds is None:
            i = self.output_index(None, views)
            return logits[:, i : i + 1]
        index = torch.tensor([self.output_index(k, views) for k in kinds], device=logits.device)
        return logits.gather(1, index.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:]))

    def forward_all(
        self, views: Mapping[str, Tensor], time: MetaInput = None, latlon: MetaInput = None
    ) -> Tensor:
        """Logits of every output channel, `[B, len(outputs), H, W]`."""
        features = self.encode(views, time, latlon)
        missing = tuple(v for v in self.views if v not in features)
        self.last_missing_views = missing
        if missing and not self.training and missing not in self._warned_missing:
            self._warned_missing.add(missing)
            warnings.warn(
                f"view(s) {list(missing)} missing: predicting from {list(features)} only", stacklevel=2
            )
        return self.decode(features, views)

    def forward(
        self, views: Mapping[str, Tensor], time: MetaInput = None, latlon: MetaInput = None
    ) -> Tensor:
        """Flood logits `[B, 1, H, W]` of the `target` output (one channel: exports and prediction)."""
        logits = self.forward_all(views, time, latlon)
        return self.select_outputs(logits, None, [v for v in views if views[v] is not None])

    def calibrate_outputs(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Shift each named output's logits so that its threshold becomes probability 0.5.

        Outputs of different label kinds reach their best F1 at different probabilities (each kind
        comes from other sources and other label conventions); one run threshold cannot serve both.
        Moving each output's final bias by -logit(t) puts every kind's operating point at 0.5, so
        evaluation, prediction and exported graphs keep one threshold. Returns the logit offsets.
        """
        last = self.head.net[-1] if isinstance(self.head, HiResFusionHead) else self.head.conv
        offsets: dict[str, float] = {}
        with torch.no_grad():
            for kind, t in thresholds.items():
                t = min(max(float(t), 0.02), 0.98)
                offset = float(torch.logit(torch.tensor(t)))
                last.bias[self.outputs.index(kind)] -= offset
                offsets[kind] = offset
        return offsets

    def decoder_parameters(self) -> list[nn.Parameter]:
        prior = list(self.prior.parameters()) if self.prior is not None else []
        return [*self.decoders.parameters(), *self.stems.parameters(), *self.head.parameters(), *prior]

"""The head varied at test time, with no training: its grid, its support, and a classifier fitted on the painting.

Sets the variations for this process, then runs ``napari-fewshot evaluate`` with the
arguments that follow ``--``.

``--grid N``: the head works on trunk features pooled to at most N x N (the engine's
``HEAD_GRID``, 32; LiteMedSAM's own grid is 64).  ``--two-scales`` (with ``--grid 64``)
registers a head ``twoscale``: the mean of ALPNet's probabilities on that grid and on
the grid pooled 2x2.

``--carried-support K``: each painted slice's support also holds the painting carried
by the engine's registration (the settings that follow the anatomy) one slice at a
time onto the K slices on each side (every ``--carried-step``-th of them; a carry stops
where the mask vanishes or the slice is not encoded yet), through the engine's
``build_support`` hook.  ``--carried-for foreground`` or ``background`` registers a head
``carried``: ALPNet taking only that class's prototypes from the carried slices (the
other's from the painted slices alone).

``--classifier alone|mix`` registers a head ``classifier``, ALPNet's with a linear
classifier fitted on the painted slices at test time.  It fits a logistic regression on the
painted slices' head features (L2-normalised, ``[C]`` per grid cell; the painting's
soft mask on the head's grid as the target, each class weighted to half the loss
unless ``--unbalanced``; L2 penalty ``--l2``; L-BFGS from the prototypes' difference)
and scores every query cell with it: ``alone`` its probability, ``mix`` the mean of its
probability and ALPNet's.  The attention map stays ALPNet's.  With the
shipped model file as weights the 1x1 reduction is the shipped ALPNet's:

    .venv/bin/python benchmarks/head_variants.py --classifier mix -- evaluate \\
        --case ../shared/data/abdomen-ct all --case ../shared/data/abdomen-mr all \\
        --case ../shared/data/brain-mr-mni all --protocols one-largest \\
        --methods alpnet classifier@src/napari_fewshot/models/litemedsam-alpnet.safetensors \\
        --repeats 1 --device cpu --cache DIR --out DIR
    .venv/bin/python benchmarks/head_variants.py --grid 64 -- evaluate ... --methods alpnet ...
    .venv/bin/python benchmarks/head_variants.py --grid 64 --two-scales -- evaluate ... \\
        --methods twoscale@src/napari_fewshot/models/litemedsam-alpnet.safetensors ...
    .venv/bin/python benchmarks/head_variants.py --carried-support 2 -- evaluate ... --methods alpnet ...
    .venv/bin/python benchmarks/head_variants.py --carried-support 2 --carried-for background -- evaluate ... \\
        --methods carried@src/napari_fewshot/models/litemedsam-alpnet.safetensors ...
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from napari_fewshot.cli import build_parser, evaluate_command
from napari_fewshot.core import features
from napari_fewshot.core.engine import FewShotSession
from napari_fewshot.core.heads import HEADS
from napari_fewshot.core.heads.alpnet import ALPNetHead, alp_logits
from napari_fewshot.core.heads.base import HeadOutput
from napari_fewshot.core.preprocess import to_encoder_slices
from napari_fewshot.core.prototypes import COSINE_SCALE
from napari_fewshot.core.registration import SliceRegistration
from napari_fewshot.core.follow import FOLLOW_ITERATIONS, FOLLOW_MARGIN_MM, FOLLOW_MAX_SIDE


def fit_classifier(support: torch.Tensor, mask: torch.Tensor, l2: float, balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[C]`` and bias of a logistic regression of ``mask`` ``[S, h, w]`` on ``support`` ``[S, C, h, w]``."""
    with torch.inference_mode(False), torch.enable_grad():
        x = F.normalize(support.clone(), dim=1).permute(0, 2, 3, 1).reshape(-1, support.shape[1]).double()
        y = mask.clone().reshape(-1).double()
        weight = torch.ones_like(y)
        if balanced:
            weight = torch.where(y > 0.5, 0.5 / y.mean().clamp_min(1e-6), 0.5 / (1 - y).mean().clamp_min(1e-6))
        foreground = (x * y[:, None]).sum(0) / y.sum().clamp_min(1e-6)
        background = (x * (1 - y)[:, None]).sum(0) / (1 - y).sum().clamp_min(1e-6)
        w = (COSINE_SCALE * (foreground - background)).requires_grad_(True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w, b], max_iter=100, line_search_fn="strong_wolfe")

        def loss() -> torch.Tensor:
            optimizer.zero_grad()
            value = (weight * F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none")).mean()
            value = value + l2 * (w * w).sum()
            value.backward()
            return value

        optimizer.step(loss)
    return w.detach().float(), b.detach().float()


def classifier_head(mode: str, l2: float, balanced: bool) -> type[ALPNetHead]:
    """The head class for these settings; it fits once per support (the engine asks in batches of queries)."""

    class ClassifierHead(ALPNetHead):
        name = "classifier"

        def __init__(self) -> None:
            super().__init__()
            self._fitted: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None

        def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
            key = (tuple(support.shape), float(support.double().sum()), float(mask.double().sum()))
            if self._fitted is None or self._fitted[0] != key:
                self._fitted = key, fit_classifier(support, mask, l2, balanced)
            w, b = self._fitted[1]
            logits, attention = alp_logits(query, *self.prototypes(support, mask))
            z = torch.einsum("nchw,c->nhw", F.normalize(query, dim=1), w) + b
            if mode == "mix":
                z = torch.logit((0.5 * (torch.sigmoid(z) + logits.softmax(dim=1)[:, 1])).clamp(1e-6, 1 - 1e-6))
            return HeadOutput(torch.stack([-z / 2, z / 2], dim=1), attention)

    return ClassifierHead


class TwoScaleHead(ALPNetHead):
    """ALPNet's foreground probability averaged over its grid and that grid pooled 2x2."""

    name = "twoscale"

    def forward(self, support: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> HeadOutput:
        fine = super().forward(support, mask, query)
        coarse = super().forward(F.avg_pool2d(support, 2), F.avg_pool2d(mask[:, None], 2)[:, 0], F.avg_pool2d(query, 2))
        coarse_probability = F.interpolate(coarse.logits.softmax(dim=1), size=query.shape[-2:], mode="bilinear",
                                           align_corners=False)[:, 1]
        z = torch.logit((0.5 * (fine.logits.softmax(dim=1)[:, 1] + coarse_probability)).clamp(1e-6, 1 - 1e-6))
        return HeadOutput(torch.stack([-z / 2, z / 2], dim=1), fine.attention)


class CarriedSupport:
    """A :class:`~napari_fewshot.core.prediction.SupportBuilder`: each painted slice's support also holds its
    painting carried by registration onto the ``reach`` slices on each side (every ``step``-th), where encoded.

    ``painted``: how many slices of the last support built were painted (the rest carried), for
    :class:`CarriedHead`.
    """

    def __init__(self, reach: int, step: int) -> None:
        self.reach, self.step, self.painted = reach, step, 0
        self.registrations: dict[str, SliceRegistration] = {}
        self.carried: dict[tuple, np.ndarray] = {}

    def _registration(self, session: FewShotSession) -> SliceRegistration:
        if session.key not in self.registrations:
            self.registrations[session.key] = SliceRegistration(
                session.volume, session.spacing_mm[1:], session.preprocessing, session.window,
                iterations=FOLLOW_ITERATIONS, margin_mm=FOLLOW_MARGIN_MM, max_side=FOLLOW_MAX_SIDE)
        return self.registrations[session.key]

    def __call__(self, session: FewShotSession, model, features: torch.Tensor, painted: np.ndarray,
                 slices: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        registration, encoded = self._registration(session), session.features.encoded
        index, masks = list(slices), [painted[z] for z in slices]
        for z in slices:
            for direction in (1, -1):
                carried, source = painted[z], z
                for distance in range(1, self.reach + 1):
                    target = z + direction * distance
                    if not 0 <= target < len(painted) or target in slices:
                        break
                    key = (session.key, z, target, painted[z].tobytes())
                    if key not in self.carried:
                        self.carried[key] = registration(carried, source, target)
                    carried, source = self.carried[key], target
                    if not carried.any() or not encoded[target]:
                        break
                    if distance % self.step == 0:
                        index.append(target)
                        masks.append(carried)
        self.painted = len(slices)
        device = session.runtime.device
        support = model.features(features[index].to(device))
        mask = to_encoder_slices(np.stack(masks).astype(np.float32), support.shape[-1], session.aspect)[:, 0].to(device)
        return support, mask


def carried_head(builder: CarriedSupport, used_for: str) -> type[ALPNetHead]:
    """ALPNet's head taking the prototypes of the class ``used_for`` (``foreground`` or ``background``) from the
    carried slices too, the other's from the painted slices alone."""

    class CarriedHead(ALPNetHead):
        name = "carried"

        def prototypes(self, support: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            painted = builder.painted or len(support)
            own = {cls: (support, mask) if used_for == cls else (support[:painted], mask[:painted])
                   for cls in ("foreground", "background")}
            return super().prototypes(*own["background"])[0], super().prototypes(*own["foreground"])[1]

    return CarriedHead


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=features.HEAD_GRID)
    parser.add_argument("--two-scales", action="store_true")
    parser.add_argument("--carried-support", type=int, default=0, metavar="K")
    parser.add_argument("--carried-step", type=int, default=1)
    parser.add_argument("--carried-for", choices=["both", "foreground", "background"], default="both")
    parser.add_argument("--classifier", choices=["alone", "mix"])
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--unbalanced", action="store_true")
    args = parser.parse_args(argv[:split])
    features.HEAD_GRID = args.grid
    if args.two_scales:
        HEADS["twoscale"] = TwoScaleHead
    builder = CarriedSupport(args.carried_support, args.carried_step) if args.carried_support else None
    if builder is not None and args.carried_for != "both":
        HEADS["carried"] = carried_head(builder, args.carried_for)
    if args.classifier:
        HEADS["classifier"] = classifier_head(args.classifier, args.l2, not args.unbalanced)
    evaluation = build_parser().parse_args(argv[split + 1:])
    if evaluation.command != "evaluate":
        parser.error("the command after -- must be evaluate")
    return evaluate_command(evaluation, build_support=builder)


if __name__ == "__main__":
    sys.exit(main())

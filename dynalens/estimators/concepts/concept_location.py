r"""Concept location: does a concept's activation map fall on the concept's pixels?

Inputs: maps :math:`F_{ij}` (n, k, H, W) (:mod:`.activation_maps`: gradients, grad × input,
Grad-CAM, CoAM) and annotated masks :math:`M_{ij}` (n, k, H, W) bool (the concept's
pixels; empty where the concept is absent). Per (image i, concept j) a hit score:

- ``"clm"``, the Concept Localisation Metric of Aysel et al. 2025 ("Concept-Based
  Explainable Artificial Intelligence: Metrics and Benchmarks", arXiv 2501.19271) **as
  reconstructed in the project guide §3.9** (the /12, the denominator and the use of a
  point are from secondary summaries, not the paper's text): :math:`\Omega_{ij}` = the
  ``region_frac`` · HW highest pixels of :math:`F_{ij}` (the paper: α·HW/12, α ∈ {1, 3, 6});
  hit iff the annotated location :math:`p_{ij} \in \Omega_{ij}`. Without ``points``,
  :math:`p_{ij}` is the mask pixel nearest the mask's centroid. Chance = ``region_frac``.
- ``"pointing"`` (the pointing game; Zhang et al. 2018, used by Furby et al. 2024): hit iff
  the argmax pixel of :math:`F_{ij}` lies in :math:`M_{ij}`. Chance = mask area / HW.
- ``"distance"``: the pointing distance of the authors' earlier code
  (``JackFurby/explainable-concept-bottleneck-models: pointing_game.py``), the Euclidean
  pixel distance from the argmax of :math:`F_{ij}` to the annotated point :math:`p_{ij}`
  (lower is better; chance = the mean distance of all pixels to the point).
- ``"region"``: the fraction of :math:`\Omega_{ij}` inside :math:`M_{ij}`. Chance = area / HW.
- ``"mass"`` (default): the share of the positive saliency mass inside the mask,
  :math:`\sum_{M} F^+ / \sum F^+` (0 where the map has no positive mass, counted in
  ``details["n_flat"]``). Chance = area / HW.

Which pairs count: every present concept (non-empty mask); or, with ``ranking`` (n, k)
(e.g. :math:`\theta_{j,k}\hat u_{ij}` for the predicted class, as CLM@l does) and
``top_l``, each image's top-l concepts, an absent one skipped (``denominator="present"``)
or a miss (``"all"``; not for ``"distance"``). The masks define presence (points alone
do not). Value: mean hit over counted pairs; per concept: the same per
column; interval: percentile bootstrap over images (maps fixed).
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts._result import ConceptResult
from dynalens.estimators.concepts._scores import bootstrap_interval

__all__ = ["SCORES", "ConceptLocation", "concept_location"]

SCORES = ("mass", "pointing", "region", "clm", "distance")
_CHUNK = 256


class ConceptLocation:
    """Concept location scores of activation maps against concept masks.

    Parameters
    ----------
    score : {"mass", "pointing", "region", "clm", "distance"}
        The per-pair hit score (module docstring).
    region_frac : float in (0, 1]
        Size of the top region Ω as a fraction of the image (CLM's α/12; default 1/12).
    top_l : int or None
        With ``ranking``: count each image's top-l concepts only.
    denominator : {"present", "all"}
        A top-l concept that is absent: skipped, or counted as a miss.
    n_boot : int
        Bootstrap replicates over images (0: no interval).
    seed : int
        Seed of the bootstrap.
    """

    def __init__(
        self,
        *,
        score: str = "mass",
        region_frac: float = 1 / 12,
        top_l: int | None = None,
        denominator: str = "present",
        n_boot: int = 200,
        seed: int = 0,
    ) -> None:
        self.score = score
        self.region_frac = region_frac
        self.top_l = top_l
        self.denominator = denominator
        self.n_boot = n_boot
        self.seed = seed

    def estimate(
        self, maps: Any, masks: Any, *, ranking: Any = None, points: Any = None
    ) -> ConceptResult:
        """Location score of ``maps`` (n, k, H, W) against ``masks`` (n, k, H, W) bool.
        ``ranking`` (n, k) orders concepts for ``top_l``; ``points`` (n, k, 2) are the
        annotated (row, column) locations for ``"clm"`` and ``"distance"``."""
        score = check_option("score", self.score, SCORES)
        frac = check_float("region_frac", self.region_frac, min=0.0, max=1.0, min_inclusive=False)
        denominator = check_option("denominator", self.denominator, ("present", "all"))
        n_boot = check_int("n_boot", self.n_boot, min=0)
        seed = check_int("seed", self.seed)
        if score == "distance" and denominator == "all":
            raise InvalidParameterError(
                "score='distance' has no value for an absent concept, so it cannot count "
                "absent top-l concepts as misses; use denominator='present'."
            )
        f, m = _check_maps(maps, masks)
        n, k, h, w = f.shape
        present = m.flatten(2).any(2)
        weight = present.to(torch.float64)
        if ranking is not None or self.top_l is not None:
            weight = _top_l_weights(ranking, self.top_l, present, denominator, n, k)
        region = max(1, round(frac * h * w))
        p = None if points is None else _check_points(points, n, k, h, w)
        parts = [  # chunks of images: temporaries stay small
            _hits(f[s : s + _CHUNK], m[s : s + _CHUNK], score, region,
                  None if p is None else p[s : s + _CHUNK])
            for s in range(0, n, _CHUNK)
        ]  # fmt: skip
        hit, chance, n_flat = (torch.cat(t) for t in zip(*parts))
        if float(weight.sum()) == 0:
            raise InvalidInputError(
                "no (image, concept) pair to score: every mask is empty (or every top-l "
                "concept is absent). Pass masks of present concepts."
            )
        # an absent concept (empty mask) counted by denominator="all" is a miss
        hit = torch.where((weight > 0) & present, hit, torch.zeros_like(hit))

        def stat(rows: torch.Tensor) -> float:
            return float((hit[rows] * weight[rows]).sum() / weight[rows].sum().clamp_min(1e-300))

        value = stat(torch.arange(n))
        interval = None
        if n_boot > 0:
            interval = bootstrap_interval(stat, n, strata=None, n_boot=n_boot, seed=seed)
        counts = weight.sum(0)
        per = (hit * weight).sum(0) / counts
        per = torch.where(counts > 0, per, torch.full_like(per, float("nan")))
        counted = weight > 0
        return ConceptResult(
            value=value,
            metric=f"concept_location_{score}",
            per_concept=per,
            interval=interval,
            n=n,
            params={
                "score": score, "region_frac": frac, "top_l": self.top_l,
                "denominator": denominator, "n_boot": n_boot, "seed": seed,
            },
            details={
                "chance": frac if score == "clm" else float(chance[counted].mean()),
                "hits": hit, "weights": weight, "n_pairs": int(counted.sum()),
                "n_flat": int((n_flat & counted).sum()),
            },
        )  # fmt: skip


def concept_location(maps: Any, masks: Any, **kwargs: Any) -> ConceptResult:
    """Functional form of :class:`ConceptLocation` (``ranking=`` and ``points=`` are
    passed to ``estimate``, the rest to the constructor).

    Examples
    --------
    >>> masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool); masks[:, :, :2, :2] = True
    >>> concept_location(masks.float(), masks, n_boot=0).value
    1.0
    """
    ranking = kwargs.pop("ranking", None)
    points = kwargs.pop("points", None)
    return ConceptLocation(**kwargs).estimate(maps, masks, ranking=ranking, points=points)


def _check_maps(maps: Any, masks: Any) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(maps).detach().to("cpu")
    # float32 maps stay float32 (n k H W values can be large); sums are taken in float64
    f = f if f.dtype in (torch.float32, torch.float64) else f.to(torch.float32)
    m = torch.as_tensor(masks).detach().to("cpu")
    if f.ndim != 4 or f.shape != m.shape or f.shape[0] == 0:
        raise InvalidInputError(
            f"maps and masks must both be (n, k, H, W) with the same shape; got "
            f"{tuple(f.shape)} and {tuple(m.shape)}. One map and one mask per image and "
            "concept (masks of absent concepts are empty)."
        )
    if m.dtype != torch.bool:
        if bool(((m != 0) & (m != 1)).any()):
            raise InvalidInputError("masks must be boolean (or 0/1); got other values.")
        m = m.bool()
    # one reduction first: a NaN or inf makes the sum non-finite (exact check only then)
    if not bool(torch.isfinite(f.sum())) and not bool(torch.isfinite(f).all()):
        raise InvalidInputError(
            f"maps contain {int((~torch.isfinite(f)).sum())} NaN or infinite values; "
            "recompute them (a saliency of a non-finite logit is undefined)."
        )
    return f, m


def _top_l_weights(
    ranking: Any, top_l: int | None, present: torch.Tensor, denominator: str, n: int, k: int
) -> torch.Tensor:
    if ranking is None or top_l is None:
        raise InvalidInputError(
            "top-l counting needs both ranking= (n, k) scores and top_l=; pass both, or "
            "neither to count every present concept."
        )
    top_l = check_int("top_l", top_l, min=1, max=k)
    r = torch.as_tensor(ranking).detach().to("cpu", torch.float64)
    if r.shape != (n, k):
        raise InvalidInputError(f"ranking must be (n, k) = ({n}, {k}); got {tuple(r.shape)}.")
    top = torch.zeros(n, k, dtype=torch.bool)
    top.scatter_(1, r.topk(top_l, dim=1).indices, True)
    keep = top & present if denominator == "present" else top
    return keep.to(torch.float64)


def _hits(
    f: torch.Tensor, m: torch.Tensor, score: str, region: int, points: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair hit (n, k), chance (n, k) and (for ``"mass"``) a flag of maps without
    positive mass."""
    h, w = f.shape[-2:]
    flat, mflat = f.flatten(2), m.flatten(2)
    area = mflat.sum(2).to(torch.float64) / (h * w)
    n_flat = torch.zeros(area.shape, dtype=torch.bool)
    if score == "mass":
        pos = flat.clamp_min(0)
        total = pos.sum(2, dtype=torch.float64)
        n_flat = total <= 0
        hit = (pos * mflat).sum(2, dtype=torch.float64) / total.clamp_min(1e-300)
        hit = torch.where(n_flat, torch.zeros_like(hit), hit)
    elif score == "pointing":
        hit = mflat.gather(2, flat.argmax(2, keepdim=True))[..., 0].to(torch.float64)
    elif score == "distance":
        p = _mask_points(m) if points is None else points
        arg = flat.argmax(2)
        hit = ((arg // w - p[..., 0]) ** 2 + (arg % w - p[..., 1]) ** 2).to(torch.float64).sqrt()
        rows = torch.arange(h, dtype=torch.float32)[:, None]
        cols = torch.arange(w, dtype=torch.float32)[None, :]
        py, px = p[..., 0, None, None].float(), p[..., 1, None, None].float()
        d = ((rows - py) ** 2 + (cols - px) ** 2).sqrt()
        area = d.sum((2, 3), dtype=torch.float64) / (h * w)  # chance distance
    else:
        top = flat.topk(region, dim=2).indices
        if score == "region":
            hit = mflat.gather(2, top).to(torch.float64).mean(2)
        else:
            p = _mask_points(m) if points is None else points
            index = (p[..., 0] * w + p[..., 1])[..., None]
            hit = (top == index).any(2).to(torch.float64)
    return hit, area, n_flat


def _mask_points(m: torch.Tensor) -> torch.Tensor:
    """(n, k, 2) the mask pixel nearest each mask's centroid ((0, 0) for empty masks)."""
    h, w = m.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    mf = m.to(torch.float32)
    area = mf.sum((2, 3)).clamp_min(1)
    cy = (mf * rows).sum((2, 3)) / area
    cx = (mf * cols).sum((2, 3)) / area
    d2 = (rows - cy[..., None, None]) ** 2 + (cols - cx[..., None, None]) ** 2
    d2 = torch.where(m, d2, torch.full_like(d2, float("inf")))
    idx = d2.flatten(2).argmin(2)
    return torch.stack([idx // w, idx % w], -1)


def _check_points(points: Any, n: int, k: int, h: int, w: int) -> torch.Tensor:
    p = torch.as_tensor(points).detach().to("cpu", torch.int64)
    if (
        p.shape != (n, k, 2)
        or bool((p < 0).any())
        or bool((p[..., 0] >= h).any())
        or bool((p[..., 1] >= w).any())
    ):
        raise InvalidInputError(
            f"points must be (n, k, 2) = ({n}, {k}, 2) integer (row, column) pixel indices "
            f"inside the {h}x{w} image; got shape {tuple(p.shape)}."
        )
    return p

r"""Entropy-based adaptive binning (EBAB) of Chelombiev, Houghton & O'Donnell 2019.

Bin edges are placed at equal-mass quantiles of the *distinct* activation values, pooled
over the layer (or per unit), so that each bin holds the same number of distinct values
(maximum-entropy binning). This covers unbounded (ReLU) ranges where fixed [-1, 1] bins
fail (IDNNs issue #12). Symbols, entropies and MI are then exactly as in
:mod:`~dynalens.estimators.mi.binning` (plug-in or Miller-Madow, nats).

Bias: as for binning — the plug-in MI is biased *upward* with few samples per bin, and for
continuous multi-unit layers the number is still a property of the bins (adaptive edges
move the edges, not the curse of dimensionality). With fewer distinct values than bins,
every distinct value gets its own bin.

Valid when: as for binning; the reproduction mode for Chelombiev et al.

Reference: Chelombiev, Houghton & O'Donnell 2019, "Adaptive estimators show information
compression in deep neural networks", ICLR.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_int, check_option
from dynalens.estimators.mi._base import Variable
from dynalens.estimators.mi.binning import CORRECTIONS, BinningMI

__all__ = ["AdaptiveBinningMI"]


def _quantile_edges(values: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Edges at equal-mass quantiles of the distinct values (deduplicated; >= 2 edges)."""
    u = torch.unique(values)  # sorted
    m = u.numel()
    if m <= n_bins:  # one bin per distinct value: cut halfway between neighbours
        mids = (u[1:] + u[:-1]) / 2
        return torch.cat([u[:1], mids, u[-1:] + 1.0])
    pos = torch.linspace(0, m - 1, n_bins + 1, device=u.device).round().long()
    edges = torch.unique(u[pos])
    edges[-1] = edges[-1] + 1.0  # the maximum falls inside the last bin
    return edges


class AdaptiveBinningMI(BinningMI):
    """Equal-mass (max-entropy) bins on the distinct values, then plug-in entropies (nats).

    Args:
        n_bins: number of bins (Chelombiev et al.: 30 or 100).
        per_unit: edges per unit (``True``) or pooled over the layer (``False``, default,
            the paper's per-layer binning).
        correction: ``"plugin"`` or ``"miller_madow"``.
    """

    name = "adaptive_binning"

    def __init__(
        self, n_bins: int = 30, per_unit: bool = False, correction: str = "plugin"
    ) -> None:
        self.n_bins = n_bins
        self.per_unit = per_unit
        self.correction = correction

    def _check_params(self) -> dict[str, Any]:
        from dynalens._validation import check_bool

        return {
            "n_bins": check_int("n_bins", self.n_bins, min=1),
            "per_unit": check_bool("per_unit", self.per_unit),
            "correction": check_option("correction", self.correction, CORRECTIONS),
        }

    def _check_cost(self, v: Variable, params: dict[str, Any]) -> None:
        """Nothing to refuse: the edges never outnumber the distinct values of the data."""

    def _edges(self, t: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        nb = params["n_bins"]
        if not params["per_unit"]:
            return _quantile_edges(t.flatten(), nb)
        # per unit: different numbers of edges per unit are padded to a common width by
        # repeating far-away edges (empty bins do not change the entropies)
        cols = [_quantile_edges(t[:, j], nb) for j in range(t.shape[1])]
        width = max(c.numel() for c in cols)
        out = []
        for c in cols:
            pad = c[-1] + torch.arange(1, width - c.numel() + 1, dtype=c.dtype, device=c.device)
            out.append(torch.cat([c, pad]))
        return torch.stack(out)

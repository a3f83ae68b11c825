r"""Plug-in mutual information of binned (discretised) variables: the IDNNs estimator.

Every continuous variable is cut into ``n_bins`` equal-width bins per unit over a given
range (Shwartz-Ziv & Tishby 2017: 30 bins on [-1, 1] for tanh units) or over the data's
range; a sample's vector of bin indices (its *pattern*) is one symbol. Discrete variables
are used as they are (one symbol per distinct row). Then, in nats,

.. math:: \hat H(A) = -\sum_a \hat p_a \log \hat p_a, \qquad
          \hat I(A;B) = \hat H(A) + \hat H(B) - \hat H(A, B),

which gives :math:`I(X;T) = H(T)` for a deterministic network over a uniform discrete X
(every input its own symbol, so :math:`H(T|X) = 0`) and :math:`I(T;Y) = H(T) - H(T|Y)`.
``correction="miller_madow"`` adds :math:`(\hat m - 1)/2n` to each entropy
(:math:`\hat m` occupied symbols; Miller 1955).

Bias: the plug-in entropy is biased *downward* by about :math:`(m-1)/2n` and the plug-in
MI *upward* (Paninski 2003, "Estimation of entropy and mutual information", Neural Comp.
15:1191): with few samples per occupied bin, independent variables look dependent.
Miller-Madow removes the first-order term.

Valid when: the variables are genuinely discrete (quantised nets, binned layers, labels),
or when reproducing the binning papers. For a continuous multi-unit layer the number is a
property of the bins: once every sample has its own pattern it is :math:`\log n` whatever
the distribution (Saxe et al. 2018; IDNNs issue #12). A :class:`BinningWarning` is issued
when a binned variable has more distinct patterns than n / 2.

References: Shwartz-Ziv & Tishby 2017, "Opening the black box of deep neural networks via
information", arXiv:1703.00810; Saxe et al. 2018, "On the information bottleneck theory of
deep learning", ICLR.
"""

from __future__ import annotations

from typing import Any

import torch

from dynalens._validation import check_int, check_option
from dynalens.errors import InvalidParameterError
from dynalens.estimators.mi._base import (
    MIEstimator,
    MIResult,
    Variable,
    plugin_entropy,
    symbols,
    warn_binning,
)
from dynalens.estimators.mi._cost import check_cost

__all__ = ["BinningMI"]

CORRECTIONS = ("plugin", "miller_madow")
RANGES = ("layer", "unit")


def _check_range(value: Any) -> tuple[float, float] | str:
    if isinstance(value, str):
        return check_option("range", value, RANGES)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidParameterError(
            f"range must be 'layer', 'unit' or a pair (low, high); got {value!r}."
        ) from None
    if not lo < hi:
        raise InvalidParameterError(f"range must have low < high; got ({lo}, {hi}).")
    return (lo, hi)


class BinningMI(MIEstimator):
    """Equal-width binning + plug-in (or Miller-Madow) entropies, in nats.

    Args:
        n_bins: bins per unit (IDNNs: 30).
        range: ``(low, high)`` shared by all units (IDNNs: ``(-1, 1)`` for tanh; values
            outside go to the end bins), ``"layer"`` (default: the variable's pooled
            min..max) or ``"unit"`` (each column's own min..max).
        correction: ``"plugin"`` or ``"miller_madow"``.

    Example:
        >>> import numpy as np
        >>> x = np.arange(8) % 4                      # 4 equiprobable symbols
        >>> BinningMI().estimate(x, x).estimate       # I(X;X) = H(X) = log 4
        1.3862943611198906
    """

    name = "binning"
    supports_entropy = True

    def __init__(
        self,
        n_bins: int = 30,
        range: tuple[float, float] | str = "layer",
        correction: str = "plugin",
    ) -> None:
        self.n_bins = n_bins
        self.range = range
        self.correction = correction

    def _check_params(self) -> dict[str, Any]:
        return {
            "n_bins": check_int("n_bins", self.n_bins, min=1),
            "range": _check_range(self.range),
            "correction": check_option("correction", self.correction, CORRECTIONS),
        }

    def _edges(self, t: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """(nb + 1,) shared or (d, nb + 1) per-unit edges."""
        nb, rng = params["n_bins"], params["range"]
        steps = torch.linspace(0.0, 1.0, nb + 1, dtype=t.dtype, device=t.device)
        if isinstance(rng, tuple):
            lo = torch.tensor(rng[0], dtype=t.dtype, device=t.device)
            hi = torch.tensor(rng[1], dtype=t.dtype, device=t.device)
        elif rng == "layer":
            lo, hi = t.min(), t.max()
        else:
            lo, hi = t.min(0).values[:, None], t.max(0).values[:, None]
        hi = torch.where(hi > lo, hi, lo + 1.0)  # a constant unit: one bin
        return lo + (hi - lo) * steps

    def _check_cost(self, v: Variable, params: dict[str, Any]) -> None:
        """Refuse, before allocating, edge tables far beyond the machine (n_bins = 1e9)."""
        nb = params["n_bins"]
        rows = v.d if params.get("range") == "unit" else 1
        check_cost(
            self.name,
            f"{v.name} with {v.d} columns and n_bins = {nb}",
            device=v.data.device,
            nbytes=3.0 * 8 * (nb + 1) * rows + 16.0 * v.n * v.d,  # edges and their checks
            fix=f"Use fewer bins: far more bins than the n = {v.n} samples give each sample "
            "its own pattern, and the plug-in entropy is then log n whatever the data.",
        )

    def _symbols(self, v: Variable, params: dict[str, Any]) -> torch.Tensor:
        if v.discrete:
            return symbols(v.data)
        from dynalens.kernels.binning import bin_indices, pattern_symbols

        self._check_cost(v, params)
        sym = pattern_symbols(bin_indices(v.data, self._edges(v.data, params)))
        m = int(sym.max()) + 1
        if v.n >= 8 and m > v.n // 2:
            warn_binning(
                f"{v.name} was binned into {m} distinct patterns for {v.n} samples; the "
                "plug-in entropy is then close to log n and measures the binning, not the "
                "data. Use fewer bins, a noise model (method='noisy'), or a kNN estimator."
            )
        return sym

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        sx, sy = self._symbols(vx, params), self._symbols(vy, params)
        from dynalens.kernels.binning import pattern_symbols

        sxy = pattern_symbols(torch.stack([sx, sy], dim=1))
        corr = params["correction"]
        hx, mx = plugin_entropy(sx, corr)
        hy, my = plugin_entropy(sy, corr)
        hxy, mxy = plugin_entropy(sxy, corr)
        mi = hx + hy - hxy
        return self._result(
            mi,
            vx.n,
            params,
            details={
                "h_x": hx,
                "h_y": hy,
                "h_xy": hxy,
                "symbols_x": mx,
                "symbols_y": my,
                "symbols_xy": mxy,
            },
        )

    def _entropy(self, v: Variable, params: dict[str, Any]) -> MIResult:
        h, m = plugin_entropy(self._symbols(v, params), params["correction"])
        return self._result(h, v.n, params, details={"symbols": m})

"""The result of an activation-patching sweep: per-example values per cell.

With ``m`` the metric, ``x`` clean and ``x′`` corrupt inputs, a cell's *value* is the mean
over examples of ``m`` in the patched run, its *effect* the value minus the mean metric of
the unpatched run that was patched, and its *normalised* effect the recovery
``r = (m_patched - m(x′)) / (m(x) - m(x′))`` (means over examples taken before the
ratio; Wang et al. 2022, Heimersheim & Nanda 2024). ``r`` reads the same in both
directions: under denoising (x′ run, clean values in) ``r = 1`` means the cell alone
restores the clean behaviour; under noising (x run, corrupt values in) ``r = 0`` means the
cell alone destroys it. Intervals are percentile bootstraps over examples (Efron 1979),
resampling clean, corrupt and patched values of an example together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dynalens._optional import require
from dynalens.errors import InvalidInputError, InvalidParameterError

if TYPE_CHECKING:
    import pandas as pd

HEAD_COMPONENTS = ("head_out", "q", "k", "v", "pattern")


@dataclass(frozen=True)
class Cell:
    """One patched place: component at a layer, at a position (``None``: all) and head
    (``None``: all). ``site`` is the name that was patched."""

    component: str
    layer: int
    site: str
    position: int | None = None
    head: int | None = None


def cells_to_arrays(cells: list[Cell]) -> dict[str, np.ndarray]:
    """Cells as columns ``cell_component, cell_site, cell_layer, cell_position,
    cell_head`` (``-1`` stands for ``None``: all positions / heads)."""
    for c in cells:
        if (c.position is not None and c.position < 0) or (c.head is not None and c.head < 0):
            raise InvalidInputError(
                f"cell {c} has a negative position or head; sweeps store them as 0..n-1 "
                "(-1 means 'all' in the stored form). Use non-negative indices."
            )

    def ints(values: list[int | None]) -> np.ndarray:
        return np.array([-1 if v is None else v for v in values], dtype=np.int64)

    return {
        "cell_component": np.array([c.component for c in cells], dtype=object),
        "cell_site": np.array([c.site for c in cells], dtype=object),
        "cell_layer": ints([c.layer for c in cells]),
        "cell_position": ints([c.position for c in cells]),
        "cell_head": ints([c.head for c in cells]),
    }


def cells_from_arrays(cols: dict[str, np.ndarray]) -> list[Cell]:
    """The inverse of :func:`cells_to_arrays`."""

    def opt(v: Any) -> int | None:
        return None if v < 0 else int(v)

    return [
        Cell(str(comp), int(layer), str(site), opt(pos), opt(h))
        for comp, site, layer, pos, h in zip(
            cols["cell_component"], cols["cell_site"], cols["cell_layer"],
            cols["cell_position"], cols["cell_head"],
        )
    ]  # fmt: skip


def check_kind(attrs: dict[str, Any], kind: str) -> None:
    """Refuse stored arrays of another result type."""
    if attrs.get("kind") != kind:
        raise InvalidInputError(
            f"these arrays hold a {attrs.get('kind')!r}, not a {kind}; read them with "
            f"that type's from_arrays."
        )


@dataclass
class PatchingResult:
    """Per-example metric values of every cell, with the unpatched baselines.

    Attributes
    ----------
    cells : list of Cell
    values : Tensor ``[cells, batch]`` float64, the metric in each patched run.
    base : Tensor ``[batch]``, the metric of the unpatched run that was patched.
    clean, corrupt : Tensor ``[batch]``; ``corrupt`` is ``None`` for ablations without one.
    mode : ``"denoising"``, ``"noising"``, ``"mean-ablation"`` or ``"zero-ablation"``.
    """

    cells: list[Cell]
    values: torch.Tensor
    base: torch.Tensor
    clean: torch.Tensor
    corrupt: torch.Tensor | None
    mode: str

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, attrs)`` for :meth:`Store.put_result`: the cells as columns,
        ``values`` ``[cells, batch]`` and the ``[batch]`` baselines, all float64, so
        :meth:`from_arrays` rebuilds the result bit for bit."""
        arrays = cells_to_arrays(self.cells)
        arrays["values"] = self.values.double().numpy()
        arrays["base"], arrays["clean"] = self.base.double().numpy(), self.clean.double().numpy()
        if self.corrupt is not None:
            arrays["corrupt"] = self.corrupt.double().numpy()
        return arrays, {"kind": "PatchingResult", "mode": self.mode}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> PatchingResult:
        """The result saved by :meth:`to_arrays` (e.g. read back with ``get_result``)."""
        check_kind(attrs, "PatchingResult")
        corrupt = arrays.get("corrupt")
        return cls(
            cells_from_arrays(arrays),
            torch.from_numpy(np.array(arrays["values"], dtype=np.float64)),
            torch.from_numpy(np.array(arrays["base"], dtype=np.float64)),
            torch.from_numpy(np.array(arrays["clean"], dtype=np.float64)),
            None if corrupt is None else torch.from_numpy(np.array(corrupt, dtype=np.float64)),
            str(attrs["mode"]),
        )

    def mean(self) -> torch.Tensor:
        """Mean patched metric per cell ``[cells]`` (what transformer-lens's
        ``get_act_patch_*`` return for the batch-mean metric)."""
        return self.values.mean(1)

    def effect(self) -> torch.Tensor:
        """Mean patched metric minus the mean unpatched metric, per cell."""
        return self.mean() - self.base.mean()

    def normalised(self) -> torch.Tensor:
        """Recovery ``(m_patched - m(x′)) / (m(x) - m(x′))`` per cell."""
        if self.corrupt is None:
            raise InvalidParameterError(
                "normalised effects need a corrupt run; pass corrupt= to the sweep."
            )
        gap = self.clean.mean() - self.corrupt.mean()
        if not self.has_normalisation():
            raise InvalidParameterError(
                f"clean and corrupt give the same mean metric (difference {float(gap):.3g}), "
                "so the recovery (m - m(x′)) / (m(x) - m(x′)) is undefined; read effect() "
                "instead, or choose a corruption that changes the metric."
            )
        return (self.mean() - self.corrupt.mean()) / gap

    def has_normalisation(self) -> bool:
        """Whether :meth:`normalised` is defined (a corrupt run whose metric differs)."""
        if self.corrupt is None:
            return False
        gap = float(self.clean.mean() - self.corrupt.mean())
        return abs(gap) > 1e-9 * max(1.0, float(self.clean.abs().mean()))

    def bootstrap(
        self, n_boot: int = 1000, level: float = 0.95, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Percentile intervals ``{"effect_lo", "effect_hi", "normalised_lo", ...}``.

        Replicate ``r`` weights example ``b`` by how often it was drawn, so a replicate's
        mean is ``values @ w_r / B``: no ``[cells, n_boot, batch]`` tensor is built.
        """
        if n_boot < 2 or not 0 < level < 1:
            raise InvalidParameterError(
                f"n_boot must be >= 2 and level in (0, 1); got {n_boot}, {level}."
            )
        b = self.values.shape[1]
        g = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, b, (n_boot, b), generator=g)
        weights = torch.zeros(n_boot, b, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(n_boot, b, dtype=torch.float64)
        )
        means = self.values @ weights.T / b  # [cells, n_boot]
        out: dict[str, torch.Tensor] = {}
        q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
        effect = means - (weights @ self.base / b)[None]
        out["effect_lo"], out["effect_hi"] = torch.quantile(effect, q, dim=1)
        if self.has_normalisation():
            assert self.corrupt is not None
            corrupt = weights @ self.corrupt / b
            norm = (means - corrupt[None]) / (weights @ self.clean / b - corrupt)[None]
            out["normalised_lo"], out["normalised_hi"] = torch.quantile(norm, q, dim=1)
        return out

    def p_values(self, n_perm: int = 10_000, seed: int = 0) -> torch.Tensor:
        """Two-sided paired sign-flip test of ``effect = 0`` per cell ``[cells]``.

        The per-example effects ``d_b = m_patched,b - m_base,b`` are symmetric about 0
        under the null, so ``p = P(|mean(s ⊙ d)| >= |mean(d)|)`` over random signs ``s``:
        exact enumeration when ``2^B <= n_perm``, else Monte Carlo with the ``(k + 1) /
        (n + 1)`` estimate (Phipson & Smyth 2010).
        """
        if n_perm < 1:
            raise InvalidParameterError(f"n_perm must be >= 1; got {n_perm}.")
        diffs = self.values - self.base[None]  # [cells, B]
        b = diffs.shape[1]
        if 2**b <= n_perm:
            codes = torch.arange(2**b)[:, None]
            signs = 1.0 - 2.0 * ((codes >> torch.arange(b)) & 1).double()  # all 2^B patterns
            correction = 0
        else:
            g = torch.Generator().manual_seed(seed)
            signs = 1.0 - 2.0 * torch.randint(0, 2, (n_perm, b), generator=g).double()
            correction = 1
        observed = diffs.mean(1).abs()
        null = (diffs @ signs.T / b).abs()  # [cells, patterns]
        tol = 1e-12 * observed.clamp_min(1.0)
        hits = (null >= (observed - tol)[:, None]).sum(1)
        return (hits + correction) / (signs.shape[0] + correction)

    def table(self, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """A tidy table, one row per cell: component, site, layer, position, head, value,
        effect (with interval), normalised (with interval), the sign-flip p-value of the
        effect, and mode."""
        pd = require("pandas", "PatchingResult.table")
        cols: dict[str, Any] = {
            "component": [c.component for c in self.cells],
            "site": [c.site for c in self.cells],
            "layer": [c.layer for c in self.cells],
            "position": pd.array([c.position for c in self.cells], dtype="Int64"),
            "head": pd.array([c.head for c in self.cells], dtype="Int64"),
            "value": self.mean().numpy(),
            "effect": self.effect().numpy(),
        }
        intervals = self.bootstrap(n_boot, level, seed)
        cols["effect_lo"] = intervals["effect_lo"].numpy()
        cols["effect_hi"] = intervals["effect_hi"].numpy()
        if self.has_normalisation():
            cols["normalised"] = self.normalised().numpy()
            cols["normalised_lo"] = intervals["normalised_lo"].numpy()
            cols["normalised_hi"] = intervals["normalised_hi"].numpy()
        cols["p_value"] = self.p_values(seed=seed).numpy()
        cols["mode"] = self.mode
        return pd.DataFrame(cols)

    def grid(self, component: str, quantity: str = "value") -> torch.Tensor:
        """One component's cells as a dense tensor in transformer-lens's layout:
        ``[layer, pos, head]`` (axes of cells patched over all positions / heads dropped);
        for ``pattern`` ``[layer, head, query_pos]``. ``quantity``: value, effect or
        normalised."""
        getters = {"value": self.mean, "effect": self.effect, "normalised": self.normalised}
        if quantity not in getters:
            raise InvalidParameterError(
                f"quantity must be one of {sorted(getters)}; got {quantity!r}."
            )
        picked = [(i, c) for i, c in enumerate(self.cells) if c.component == component]
        if not picked:
            have = sorted({c.component for c in self.cells})
            raise InvalidParameterError(
                f"no cells of component {component!r}; the sweep has {have}."
            )
        numbers = getters[quantity]()
        layers = sorted({c.layer for _, c in picked})
        positions = sorted({c.position for _, c in picked if c.position is not None})
        heads = sorted({c.head for _, c in picked if c.head is not None})
        shape = [len(layers), max(len(positions), 1), max(len(heads), 1)]
        out = torch.full(shape, float("nan"), dtype=torch.float64)
        for i, c in picked:
            p = positions.index(c.position) if c.position is not None else 0
            h = heads.index(c.head) if c.head is not None else 0
            out[layers.index(c.layer), p, h] = numbers[i]
        flags = (bool(positions), bool(heads))
        if component == "pattern":
            out, flags = out.transpose(1, 2), (bool(heads), bool(positions))
        drop = tuple(d for d, keep in zip((1, 2), flags) if not keep)
        return out.squeeze(drop) if drop else out

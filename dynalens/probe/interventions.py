"""Interventions: replace, add to or project an activation at a site, scoped.

One primitive under every circuits analysis. An :class:`Intervention` names a site (a
module path, a hook point, or a transformer-lens name that the model's backend resolves,
see :mod:`dynalens.probe.interventions_sites`), a source and an operation, optionally
restricted to rows (batch), positions and heads. With ``a`` the activation, ``s`` the
source and ``I`` the selected entries:

- ``replace``: ``a[I] <- s[I]`` (activation patching; Vig et al. 2020, Meng et al. 2022);
- ``add``: ``a[I] <- a[I] + s[I]`` (steering);
- ``project``: ``a[I] <- a[I] + (s[I] - a[I]) Q Qᵀ`` with ``Q`` a ``[d, k]`` orthonormal
  basis of the last axis: the interchange of the subspace spanned by ``Q`` (Geiger et al.
  2024, distributed alignment search); with ``source="zero"`` it projects the subspace out.

The source is a tensor (a cached run from :func:`record_activations`, or a mean from
:func:`mean_activation`; batch 1 broadcasts), ``"zero"``, or a callable
``fn(activation) -> tensor`` of the activation's shape. When ``rows`` is given and the
source has as many rows as were selected, source row ``i`` feeds selected row ``i``
(this is how the batched patching engine stacks cells on the batch axis).

:func:`intervene` attaches a list of interventions and removes exactly the hooks it added
on exit, also when the forward raises; interventions at one site apply in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions_sites import (
    Backend,
    EditingHooks,
    SiteAccess,
    detect_backend,
)

Source = torch.Tensor | str | Callable[[torch.Tensor], torch.Tensor]
Index = int | Sequence[int] | None
_OPS = ("replace", "add", "project")


def _as_index_list(value: Any, what: str) -> list[int] | slice | None:
    if value is None:
        return None
    if isinstance(value, slice):
        return value
    if isinstance(value, range) and value.step == 1:
        return slice(value.start, value.stop)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, (list, tuple, range)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        if not value:
            raise InvalidParameterError(f"{what} must not be empty; pass None for all.")
        return list(value)
    raise InvalidParameterError(f"{what} must be an int, a list of ints or None; got {value!r}.")


@dataclass(frozen=True)
class Intervention:
    """Change the activation at ``site``; see the module docstring for the formulas.

    Parameters
    ----------
    site : str
        A site name (module path, hook point or transformer-lens name).
    source : Tensor, "zero" or callable
        What to put in.
    op : {"replace", "add", "project"}
    positions, heads, rows : int, list of int, or None
        Restrict to these positions (the ``pos`` / ``query_pos`` axis), heads (the
        ``head`` axis) and batch rows; ``None`` means all.
    basis : Tensor, optional
        ``[d, k]`` orthonormal columns, required by ``op="project"``.
    """

    site: str
    source: Source = "zero"
    op: Literal["replace", "add", "project"] = "replace"
    positions: Index = None
    heads: Index = None
    rows: Index | range | slice = None
    basis: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.site, str):
            raise InvalidParameterError(f"site must be a name (str); got {self.site!r}.")
        if self.op not in _OPS:
            raise InvalidParameterError(f"op must be one of {_OPS}; got {self.op!r}.")
        if isinstance(self.source, str) and self.source != "zero":
            raise InvalidParameterError(
                f"source must be a tensor, 'zero' or a callable; got {self.source!r}. For a "
                "mean, pass mean_activation(record_activations(...)[site])."
            )
        if not isinstance(self.source, (torch.Tensor, str)) and not callable(self.source):
            raise InvalidParameterError(
                f"source must be a tensor, 'zero' or a callable; got {type(self.source).__name__}."
            )
        if (self.op == "project") != (self.basis is not None):
            raise InvalidParameterError("op='project' needs basis=Q ([d, k]); other ops take none.")
        if self.basis is not None:
            q = self.basis.double()
            if q.ndim != 2 or not torch.allclose(
                q.T @ q, torch.eye(q.shape[1], dtype=q.dtype), atol=1e-5
            ):
                raise InvalidParameterError(
                    "basis must be [d, k] with orthonormal columns (QᵀQ = I); orthonormalise "
                    "it first, e.g. torch.linalg.qr(basis).Q."
                )
        for what in ("positions", "heads", "rows"):
            _as_index_list(getattr(self, what), what)


def _selector(
    value: list[int] | slice | None, size: int, what: str, site: str
) -> slice | torch.Tensor:
    if value is None or isinstance(value, slice):
        return slice(None) if value is None else value
    bad = [v for v in value if not -size <= v < size]
    if bad:
        raise InvalidInputError(
            f"{what} {bad} out of range at site {site!r}, which has {size} {what} "
            f"(0..{size - 1}, or negative from the end)."
        )
    return torch.tensor([v % size for v in value])


def _apply(iv: Intervention, access: SiteAccess, work: torch.Tensor) -> None:
    """Apply one intervention to ``work`` in place."""
    axes = access.axes(work.ndim)
    chosen: dict[int, slice | torch.Tensor] = {}
    wanted: tuple[tuple[str, str, Any], ...] = (
        ("rows", "batch", iv.rows),
        ("positions", "pos", iv.positions),
        ("heads", "head", iv.heads),
    )
    for what, axis, given in wanted:
        spec = _as_index_list(given, what)
        if spec is None:
            continue
        names = ("pos", "query_pos") if axis == "pos" else (axis,)
        dims = [i for i, a in enumerate(axes) if a in names]
        if not dims:
            raise InvalidInputError(
                f"{what} were given, but site {iv.site!r} has axes {axes} and no {axis!r} "
                f"axis; drop {what}= or choose a site with {axis}s."
            )
        chosen[dims[0]] = _selector(spec, work.shape[dims[0]], what, iv.site)
    tensors = [d for d, s in chosen.items() if isinstance(s, torch.Tensor)]
    for k, d in enumerate(tensors):  # outer product of the index lists
        shape = [1] * len(tensors)
        shape[k] = -1
        chosen[d] = chosen[d].reshape(shape)  # type: ignore[union-attr]
    index = tuple(chosen.get(d, slice(None)) for d in range(work.ndim))
    value = _source_values(iv, work, index, chosen.get(0))
    if iv.op == "replace":
        work[index] = value
    elif iv.op == "add":
        work[index] = work[index] + value
    else:
        q = iv.basis.to(work.dtype)  # type: ignore[union-attr]
        if work.shape[-1] != q.shape[0]:
            raise InvalidInputError(
                f"basis has {q.shape[0]} rows but site {iv.site!r} has last axis "
                f"{work.shape[-1]}; pass a [{work.shape[-1]}, k] basis."
            )
        current = work[index]
        work[index] = current + (value - current) @ q @ q.T


def _source_values(
    iv: Intervention,
    work: torch.Tensor,
    index: tuple[Any, ...],
    rows: slice | torch.Tensor | None,
) -> torch.Tensor:
    if isinstance(iv.source, str):  # "zero"
        return torch.zeros_like(work[index])
    if not isinstance(iv.source, torch.Tensor):
        full = iv.source(work)
        if not isinstance(full, torch.Tensor) or full.shape != work.shape:
            raise InvalidInputError(
                f"the source callable of site {iv.site!r} must return a tensor of the "
                f"activation's shape {tuple(work.shape)}; got "
                f"{getattr(full, 'shape', type(full).__name__)}."
            )
        return full[index]
    src = iv.source.to(device=work.device, dtype=work.dtype)
    n_selected = None
    if isinstance(rows, torch.Tensor):
        n_selected = rows.numel()
    elif isinstance(rows, slice):
        n_selected = len(range(*rows.indices(work.shape[0])))
    if src.ndim != work.ndim:
        raise InvalidInputError(
            f"source for site {iv.site!r} has shape {tuple(src.shape)}, the activation "
            f"{tuple(work.shape)}; they need the same number of axes."
        )
    aligned = n_selected is not None and src.shape[0] == n_selected != work.shape[0]
    target = (n_selected if aligned else work.shape[0], *work.shape[1:])
    try:
        src = src.expand(target)
    except RuntimeError:
        raise InvalidInputError(
            f"source for site {iv.site!r} has shape {tuple(src.shape)}, which does not fit "
            f"the activation {tuple(work.shape)} (batch must be equal, 1, or the number of "
            "selected rows; other axes equal or 1). Clean and corrupt inputs must have the "
            "same shape."
        ) from None
    if not aligned:
        return src[index]
    local: slice | torch.Tensor = slice(None)
    if isinstance(rows, torch.Tensor):
        local = torch.arange(rows.numel()).reshape(rows.shape)
    return src[(local, *index[1:])]


def check_eval_mode(model: nn.Module) -> None:
    """Refuse a model in training mode (dropout and batch statistics would make patched
    runs random and rows dependent on each other)."""
    if model.training:
        raise InvalidInputError(
            f"{type(model).__name__} is in training mode: dropout and batch norm would make "
            "patched runs random and couple the rows of a batch. Call model.eval() first."
        )


@contextmanager
def intervene(
    model: nn.Module,
    interventions: Sequence[Intervention],
    *,
    backend: Backend | None = None,
) -> Iterator[EditingHooks]:
    """Attach ``interventions`` to ``model`` for the ``with`` block.

    Example
    -------
    >>> cache = record_activations(model, clean, ["blocks.0.hook_resid_pre"])
    >>> with intervene(model, [Intervention("blocks.0.hook_resid_pre",
    ...                                     cache["blocks.0.hook_resid_pre"], positions=[3])]):
    ...     logits = model(corrupt)

    Raises
    ------
    SiteNotFoundError
        A site does not exist (close matches named).
    InvalidInputError
        The model is in training mode; or, during the forward, positions / heads / rows
        are out of range or the source does not fit the activation.
    """
    check_eval_mode(model)
    backend = backend or detect_backend(model)
    by_site: dict[str, list[Intervention]] = {}
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise InvalidParameterError(f"expected Intervention objects; got {type(iv).__name__}.")
        by_site.setdefault(iv.site, []).append(iv)
    accesses = {site: backend.access(site) for site in by_site}
    hooks = EditingHooks()
    with hooks:
        for site, group in by_site.items():
            hooks_access = accesses[site]

            def edit(
                act: torch.Tensor,
                group: list[Intervention] = group,
                access: SiteAccess = hooks_access,
            ) -> torch.Tensor:
                work = act.clone()
                for iv in group:
                    _apply(iv, access, work)
                return work

            hooks_access.attach(hooks, edit)
        yield hooks


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output: a tensor, ``output.logits``, or the first tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise InvalidInputError(
        f"cannot find logits in a model output of type {type(output).__name__}; the model "
        "must return a tensor, a tuple starting with one, or an object with .logits."
    )


@torch.no_grad()
def record_activations(
    model: nn.Module,
    inputs: torch.Tensor,
    sites: Sequence[str],
    *,
    backend: Backend | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model(inputs)`` once and return ``{site: activation}`` in declared axes
    (a cached source run for :class:`Intervention`)."""
    check_eval_mode(model)
    backend = backend or detect_backend(model)
    found: dict[str, torch.Tensor] = {}
    hooks = EditingHooks()
    with hooks:
        for site in dict.fromkeys(sites):

            def keep(act: torch.Tensor, site: str = site) -> torch.Tensor:
                found[site] = act.detach().clone()
                return act

            backend.access(site).attach(hooks, keep)
        model(inputs)
    missing = [s for s in sites if s not in found]
    if missing:
        raise InvalidInputError(
            f"sites {missing} did not run in the forward pass of {type(model).__name__}."
        )
    return found


def mean_activation(activation: torch.Tensor, *, per_position: bool = True) -> torch.Tensor:
    """The mean over the batch (and over positions unless ``per_position``), keeping
    broadcastable axes of size 1: the source of mean ablation (per position, over a
    reference set such as Wang et al.'s ABC distribution)."""
    dims = (0,) if per_position or activation.ndim < 3 else (0, 1)
    return activation.mean(dim=dims, keepdim=True)

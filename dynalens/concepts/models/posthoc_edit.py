r"""Global model edits of post-hoc CBMs (Yuksekgonul et al. 2023, §5; the paper released
no editing code): pure functions that return a new model and leave the old one unchanged.

- :func:`prune_concepts`: set :math:`W_{k,i} = 0` for the named concepts i, for every
  class k or for the given classes. On standardised margins z_i = (m_i - μ_i)/σ_i this
  replaces the concept's contribution by its training mean for those classes.
- ``renormalize=True`` ("prune and normalise"): rescale each edited class row of W to its
  norm before the edit, so that the other concepts' weights grow proportionally.
- :func:`finetune_head`: a few full-batch gradient steps of the head (cross-entropy) on a
  handful of examples of the target distribution, pruned weights kept at 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_float, check_int
from dynalens.concepts.models.posthoc import PosthocCBM
from dynalens.errors import InvalidInputError, close_matches
from dynalens.estimators.concepts._checks import as_class_labels

__all__ = ["finetune_head", "prune_concepts"]


def _indices(model: PosthocCBM, concepts: Sequence[str] | str) -> list[int]:
    names = list(model.bank.names)
    wanted = [concepts] if isinstance(concepts, str) else list(concepts)
    out = []
    for name in wanted:
        if name not in names:
            raise InvalidInputError(
                f"concept {name!r} is not in the bank{close_matches(name, names) or '.'} "
                f"Concepts: {', '.join(names)}."
            )
        out.append(names.index(name))
    return out


def _with_head(model: PosthocCBM, weight: torch.Tensor, bias: torch.Tensor) -> PosthocCBM:
    return PosthocCBM(model.backbone, model.bank, weight, bias, model.mean.clone(),
                      model.sd.clone(), layer=model.layer)  # fmt: skip


def prune_concepts(
    model: PosthocCBM,
    concepts: Sequence[str] | str,
    *,
    classes: Sequence[int] | None = None,
    renormalize: bool = False,
) -> PosthocCBM:
    """A copy of ``model`` whose head ignores ``concepts`` (for ``classes``, default all).

    Examples:
        >>> from torch import nn
        >>> from dynalens.concepts.data import make_tabular_concepts
        >>> from dynalens.concepts.models.posthoc import fit_posthoc_cbm, learn_concept_bank
        >>> data = make_tabular_concepts(600, seed=0)
        >>> model = fit_posthoc_cbm(nn.Identity(), data.x, data.y,
        ...                         learn_concept_bank(data.x, data.c, data.names), alpha=1e-3)
        >>> edited = prune_concepts(model, "red")
        >>> float(edited.weight[:, data.names.index("red")].abs().sum())
        0.0
    """
    cols = _indices(model, concepts)
    t = model.weight.shape[0]
    rows = list(range(t)) if classes is None else [check_int("class", k, min=0, max=t - 1)
                                                    for k in classes]  # fmt: skip
    w = model.weight.clone()
    before = w.norm(dim=1)
    for k in rows:
        w[k, cols] = 0.0
    if renormalize:
        after = w.norm(dim=1)
        scale = torch.where(after > 0, before / after.clamp_min(1e-300), torch.ones_like(after))
        for k in rows:
            w[k] *= scale[k]
    return _with_head(model, w, model.bias.clone())


def finetune_head(
    model: PosthocCBM,
    x: torch.Tensor,
    y: Any,
    *,
    steps: int = 100,
    lr: float = 0.1,
) -> PosthocCBM:
    """A copy of ``model`` whose head took ``steps`` full-batch Adam steps on (x, y);
    weights that are exactly 0 (pruned or sparse) stay 0."""
    steps = check_int("steps", steps, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    z = model.concepts(x)
    labels = as_class_labels("y", y, n=len(z))
    keep = (model.weight != 0).double()
    w = model.weight.clone().requires_grad_(True)
    b = model.bias.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(z @ (w * keep).T + b, labels).backward()
        opt.step()
    return _with_head(model, (w * keep).detach(), b.detach())

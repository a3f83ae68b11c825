r"""Xu et al.'s gradient inference for energy-based CBMs: relax the concepts and the class
to probabilities and minimise the total energy by Adam (``GradientInference.py`` of
xmed-lab/ECBM).

Free variables: two-way concept logits u (n, k, 2) and class logits v (n, T), with
:math:`\tilde c = \mathrm{softmax}(u)[..., 1]` and :math:`\tilde y = \mathrm{softmax}(v)`;
the relaxed energy is

.. math::

    \tilde E = \langle \tilde y, E(x, \cdot) \rangle
    + \lambda_c \sum_k \langle \mathrm{softmax}(u_k), E(x, c_k = \cdot) \rangle
    + \lambda_g \langle \tilde y, E(\tilde c, \cdot) \rangle

(the global energy module evaluated at the relaxed configuration). Written concepts are
clamped to their values; the others and the class move. Adam (lr 0.1 as released) runs
until the mean energy has not improved by more than ``tol`` (1e-4) for ``patience`` steps
(10 as released) or for ``max_steps`` (200) steps. Starting point: u at the concept
branch's logits, v = 0.

Differences from the released step: there, the written concepts' logits
:math:`(\mathrm{onehot}(c) - 0.5) \cdot 10` are parameters that the optimiser keeps
moving, and the intervention step sets :math:`\lambda_{xy} = \lambda_{xc} = 0` (only the
global energy is minimised, λ_cy = 3). Here written concepts stay written and the total
energy keeps its weights; the exact alternatives are ``inference="marginal"`` / ``"map"``.
"""

from __future__ import annotations

from typing import Any

import torch


def minimise_energy(
    model: Any,
    x: torch.Tensor,
    values: torch.Tensor | None,
    written: torch.Tensor | None,
    *,
    lr: float = 0.1,
    patience: int = 10,
    max_steps: int = 200,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log of the relaxed class probabilities (n, T), relaxed concept probabilities
    (n, k)) at the end of the descent."""
    with torch.no_grad():
        e_y, e_c = (e.detach() for e in model.energies(x))
    n, k = e_c.shape[0], e_c.shape[1]
    u = (-e_c).clone().requires_grad_(True)  # start at the concept branch's beliefs
    v = torch.zeros(n, model.n_classes, dtype=e_y.dtype, requires_grad=True)
    clamp = torch.zeros(n, k, dtype=torch.bool) if written is None else written.bool()
    fixed = torch.zeros(n, k, dtype=e_c.dtype) if values is None else (values >= 0.5).to(e_c.dtype)
    opt = torch.optim.Adam([u, v], lr=lr)
    params = [p for p in model.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    best, stale = float("inf"), 0

    def relaxed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = torch.softmax(u, 2)
        q = torch.where(clamp[..., None], torch.stack([1 - fixed, fixed], 2), q)
        y_soft = torch.softmax(v, 1)
        energy = (
            (y_soft * e_y).sum(1)
            + model.lambda_c * (q * e_c).sum((1, 2))
            + model.lambda_g * (y_soft * model.global_energy(q[..., 1])).sum(1)
        )
        return energy, y_soft, q[..., 1]

    try:
        with torch.enable_grad():  # callers (the intervention engine) run under no_grad
            for _ in range(max_steps):
                energy, _, _ = relaxed()
                loss = energy.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                value = float(loss.detach())
                if value < best - tol:
                    best, stale = value, 0
                else:
                    stale += 1
                    if stale >= patience:
                        break
            with torch.no_grad():
                _, y_soft, c_soft = relaxed()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return y_soft.clamp_min(1e-300).log(), c_soft

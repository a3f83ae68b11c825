r"""Energy-based concept bottleneck models (Xu et al. 2024, "Energy-Based Concept
Bottleneck Models: Unifying Prediction, Concept Intervention, and Probabilistic
Interpretations", ICLR), exact on small models by enumerating concept configurations.

Three energies on a backbone's features z = b(x): a class energy :math:`E(x, y)` (a
linear layer, one energy per class), concept energies :math:`E(x, c_k = v)` (two per
concept) and a global energy :math:`E(c, y)` (any module mapping a configuration
c ∈ {0,1}^k to T energies; an MLP by default). Each branch is a Boltzmann distribution:

.. math::

    p(y \mid x) = \mathrm{softmax}_y(-E(x, y)), \quad
    p(c_k \mid x) = \mathrm{softmax}_v(-E(x, c_k = v)), \quad
    p(c \mid y) \propto \exp(-E(c, y)),

and inference, interventions and explanations use the total energy
:math:`E(x, c, y) = E(x, y) + \lambda_c \sum_k E(x, c_k) + \lambda_g E(c, y)`,
:math:`p(c, y \mid x) \propto \exp(-E(x, c, y))`. With k ≤ 16 every quantity is summed
exactly over the :math:`2^k` configurations (Xu et al. relax c and y and minimise the
energy by gradient descent, also provided). Beyond k = 16 the exact methods refuse;
:mod:`~dynalens.concepts.models.energy_gibbs` samples the same distributions by Gibbs
sampling and reports Monte Carlo standard errors:

- :meth:`EnergyCBM.concept_given_class`: :math:`p(c_k \mid y) = \sum_{c_{-k}} p(c \mid y)`,
  :math:`p(c_i, c_j \mid y)`, :math:`p(c_i \mid y, c_j) = p(c_i, c_j \mid y) / p(c_j \mid
  y)` and :math:`p(c_i \mid c_j) = \sum_y \pi_y p(c_i, c_j \mid y) / \sum_y \pi_y p(c_j
  \mid y)` for a class prior π (the paper's probabilistic interpretations);
- :meth:`EnergyCBM.posterior`: interventions condition on the written concepts S,
  :math:`p(y, c_{-S} \mid x, c_S) \propto \exp(-E(x, c, y))` -- the other concepts move,
  as in the paper's intervention, but exactly. ``inference="map"`` minimises the energy
  instead of summing it: per class :math:`-\min_{c_{-S}} E(x, c, y)`, whose argmax is
  the energy-minimising class; ``inference="gradient"`` is Xu et al.'s own relaxed
  minimisation by Adam (:mod:`~dynalens.concepts.models._energy_descent`).

The released ``CalcImportanceScore.py`` estimates p(c | y) from frequencies of predicted
hard concepts per predicted class instead of the model's marginals; that different
quantity is ``energy_concept_importance(model, x, compat="ecbm")``
(:mod:`~dynalens.concepts.models.energy_importance`).

Training (:func:`fit_energy_cbm`): the negative log-likelihood of each branch's
Boltzmann distribution, :math:`\mathrm{CE}(-E(x,\cdot), y) + \lambda_c \sum_k
\mathrm{CE}(-E(x, c_k = \cdot), c_k) + \lambda_g \mathrm{CE}(-E(c, \cdot), y)` with the
true c in the global term.

Examples
--------
>>> model = EnergyCBM(nn.Linear(16, 32), 32, n_concepts=6, n_classes=4)  # doctest: +SKIP
>>> fit_energy_cbm(model, x, c, y)  # doctest: +SKIP
>>> intervention_curve(model.concept_task(x), model.concepts(x), c, y)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.concepts.models._energy_descent import minimise_energy
from dynalens.concepts.models.cbm import FitHistory, _check_data, _epoch, _StepCounter
from dynalens.errors import EstimatorRegimeError, InvalidInputError, InvalidParameterError
from dynalens.estimators.concepts import ConceptTask

__all__ = ["EnergyCBM", "fit_energy_cbm"]

MAX_EXACT = 16
INFERENCE = ("marginal", "map", "gradient")


class EnergyCBM(nn.Module):
    """Class, concept and global energies on a backbone (see the module docstring).

    Parameters
    ----------
    backbone : nn.Module
        Maps inputs to ``n_features`` features.
    n_features, n_concepts, n_classes : int
    global_energy : nn.Module, optional
        Maps configurations (m, k) in {0, 1} to energies (m, T); default an MLP with
        ``hidden`` units.
    lambda_c, lambda_g : float
        Weights of the concept and global energies in the total energy.
    """

    configs: torch.Tensor  # (2^k, k) every concept configuration, row i = binary i
    max_exact = MAX_EXACT  # largest k summed exactly; (0, k) configs beyond

    def __init__(
        self,
        backbone: nn.Module,
        n_features: int,
        n_concepts: int,
        n_classes: int,
        *,
        global_energy: nn.Module | None = None,
        hidden: int = 16,
        lambda_c: float = 1.0,
        lambda_g: float = 1.0,
    ) -> None:
        super().__init__()
        d = check_int("n_features", n_features, min=1)
        self.k = check_int("n_concepts", n_concepts, min=1)
        self.n_classes = check_int("n_classes", n_classes, min=2)
        self.lambda_c = check_float("lambda_c", lambda_c, min=0.0)
        self.lambda_g = check_float("lambda_g", lambda_g, min=0.0)
        self.backbone = backbone
        self.class_energy = nn.Linear(d, self.n_classes)
        self.concept_energy = nn.Linear(d, 2 * self.k)
        self.global_energy = global_energy or nn.Sequential(
            nn.Linear(self.k, hidden), nn.ReLU(), nn.Linear(hidden, self.n_classes)
        )
        m = 2**self.k if self.k <= MAX_EXACT else 0
        bits = (torch.arange(m)[:, None] >> torch.arange(self.k - 1, -1, -1)) & 1
        self.register_buffer("configs", bits.to(torch.get_default_dtype()), persistent=False)

    # -- the three branches ------------------------------------------------------------
    def energies(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E(x, y) (n, T), E(x, c_k = v) (n, k, 2))."""
        z = self.backbone(x)
        return self.class_energy(z), self.concept_energy(z).view(-1, self.k, 2)

    def class_proba(self, x: torch.Tensor) -> torch.Tensor:
        """p(y | x) = softmax(-E(x, y)), (n, T)."""
        return torch.softmax(-self.energies(x)[0], 1)

    def concepts(self, x: torch.Tensor) -> torch.Tensor:
        """p(c_k = 1 | x) from the concept energies, (n, k)."""
        return torch.softmax(-self.energies(x)[1], 2)[..., 1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(concept logits E(x, c_k=0) - E(x, c_k=1), class logits -E(x, y))."""
        e_y, e_c = self.energies(x)
        return e_c[..., 0] - e_c[..., 1], -e_y

    def global_energies(self) -> torch.Tensor:
        """E(c, y) of every configuration, (2^k, T); row i is ``self.configs[i]``."""
        self.require_exact()
        out = self.global_energy(self.configs)
        if out.shape != (2**self.k, self.n_classes):
            raise InvalidInputError(
                f"global_energy must map (m, {self.k}) configurations to (m, "
                f"{self.n_classes}) energies; got {tuple(out.shape)}."
            )
        return out

    # -- exact probabilities -----------------------------------------------------------
    def require_exact(self) -> None:
        """Refuse exact enumeration beyond ``max_exact`` concepts."""
        if self.k > MAX_EXACT:
            raise EstimatorRegimeError(
                f"exact enumeration sums 2^k configurations; k = {self.k} > {MAX_EXACT}. Use "
                "dynalens.concepts.models.energy_gibbs (gibbs_concept_given_class, "
                "gibbs_posterior), which sample the same distributions and report Monte "
                "Carlo standard errors."
            )

    def concept_given_class(self, prior: Any = None) -> dict[str, torch.Tensor]:
        """Exact conditionals of the global energy, in float64.

        Returns ``p_c_given_y`` (T, 2^k), ``marginal`` (T, k) = p(c_i = 1 | y), ``pair``
        (T, k, k) = p(c_i = 1, c_j = 1 | y), ``given_class_and_concept`` (T, k, k) =
        p(c_i = 1 | y, c_j = 1), and ``given_concept`` (k, k) = p(c_i = 1 | c_j = 1)
        under the class prior ``prior`` (T,) (default uniform). NaN where the condition
        has probability 0."""
        with torch.no_grad():
            logp = torch.log_softmax(-self.global_energies().double().T, 1)  # (T, 2^k)
        p = logp.exp()
        cfg = self.configs.double()
        marginal = p @ cfg
        pair = torch.einsum("tm,mi,mj->tij", p, cfg, cfg)
        pi = _prior(prior, self.n_classes)
        pair_all = torch.einsum("t,tij->ij", pi, pair)
        marg_all = pi @ marginal
        return {
            "p_c_given_y": p,
            "marginal": marginal,
            "pair": pair,
            "given_class_and_concept": pair / marginal[:, None, :],
            "given_concept": pair_all / marg_all[None, :],
        }

    def log_joint(self, x: torch.Tensor, *, chunk: int = 256) -> torch.Tensor:
        """log p(c, y | x), (n, 2^k, T) in float64, normalised over (c, y)."""
        return self._scores(x, "marginal", None, None, chunk)[0]

    def posterior(
        self,
        x: torch.Tensor,
        values: torch.Tensor | None = None,
        written: torch.Tensor | None = None,
        *,
        inference: str = "marginal",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Task scores and concept probabilities given the written concepts.

        ``values`` (n, k) hold the written concepts (rounded to 0/1) where ``written``
        (n, k) is True. ``inference="marginal"``: returns (log p(y | x, c_S) (n, T),
        p(c_k = 1 | x, c_S) (n, k)); ``"map"``: (-min over c_-S of E(x, c, y) (n, T),
        the minimising configuration of the best class (n, k)); ``"gradient"``: (log of
        the relaxed class probabilities, relaxed concept probabilities) after Xu et al.'s
        Adam descent on the relaxed energy."""
        inference = check_option("inference", inference, INFERENCE)
        if inference == "gradient":
            return minimise_energy(self, x, values, written)
        return self._scores(x, inference, values, written, 256)[1:]

    def _scores(
        self,
        x: torch.Tensor,
        inference: str,
        values: torch.Tensor | None,
        written: torch.Tensor | None,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.require_exact()
        cfg = self.configs.double()
        with torch.no_grad():
            e_y, e_c = (e.double() for e in self.energies(x))
            e_g = self.global_energies().double()
        n = e_y.shape[0]
        if written is not None and values is not None:
            if written.shape != (n, self.k) or values.shape != (n, self.k):
                raise InvalidInputError(
                    f"values and written must be ({n}, {self.k}); got "
                    f"{tuple(values.shape)} and {tuple(written.shape)}."
                )
        joints, ys, cs = [], [], []
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            # sum_k E(x, c_k) for every configuration: E0 summed + c @ (E1 - E0)
            e_concepts = (
                e_c[sl, :, 0].sum(1, keepdim=True) + (e_c[sl, :, 1] - e_c[sl, :, 0]) @ cfg.T
            )
            energy = (
                e_y[sl, None, :]
                + self.lambda_c * e_concepts[:, :, None]
                + self.lambda_g * e_g[None, :, :]
            )  # (b, 2^k, T)
            if written is not None and values is not None:
                w, v = written[sl].bool(), (values[sl].double() >= 0.5).double()
                clash = ((cfg[None] != v[:, None]) & w[:, None]).any(2)  # (b, 2^k)
                energy = energy.masked_fill(clash[:, :, None], float("inf"))
            flat = -energy.flatten(1)
            log_joint = (flat - torch.logsumexp(flat, 1, keepdim=True)).view_as(energy)
            joints.append(log_joint)
            if inference == "marginal":
                ys.append(torch.logsumexp(log_joint, 1))
                cs.append(torch.einsum("bmt,mk->bk", log_joint.exp(), cfg))
            else:
                best, arg = (-energy).max(1)  # (b, T): -min over configurations
                ys.append(best)
                cs.append(cfg[arg.gather(1, best.argmax(1, keepdim=True)).squeeze(1)])
        return torch.cat(joints), torch.cat(ys), torch.cat(cs)

    def concept_task(self, x: torch.Tensor, *, inference: str = "marginal") -> _EnergyTask:
        """The :class:`~dynalens.estimators.concepts.ConceptTask` of ``x`` for
        ``intervention_curve``: task scores conditioned on the written concepts (values
        on the probability scale, written ones 0/1)."""
        return _EnergyTask(self, x, check_option("inference", inference, INFERENCE))


class _EnergyTask(ConceptTask):
    def __init__(self, model: EnergyCBM, x: torch.Tensor, inference: str) -> None:
        self.model, self.x, self.inference = model, x, inference

    def __call__(self, values: torch.Tensor, written: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.posterior(self.x, values, written, inference=self.inference)[0]


def _prior(prior: Any, t: int) -> torch.Tensor:
    if prior is None:
        return torch.full((t,), 1.0 / t, dtype=torch.float64)
    pi = torch.as_tensor(prior, dtype=torch.float64)
    if pi.shape != (t,) or bool((pi < 0).any()) or abs(float(pi.sum()) - 1) > 1e-6:
        raise InvalidParameterError(
            f"prior must be {t} non-negative class probabilities summing to 1; got {prior!r}."
        )
    return pi


def fit_energy_cbm(
    model: EnergyCBM,
    x: torch.Tensor,
    c: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 200,
    lr: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    callback: Any = None,
) -> FitHistory:
    """Train the three branches jointly (module docstring) in place; the history's
    ``concept_loss`` is the concept term, ``task_loss`` the class plus global terms."""
    epochs = check_int("epochs", epochs, min=1)
    lr = check_float("lr", lr, min=0.0, min_inclusive=False)
    seed = check_int("seed", seed)
    n = _check_data(x, c, y)
    if c.shape[1] != model.k:
        raise InvalidInputError(f"c has {c.shape[1]} concepts; the model has {model.k}.")
    size = n if batch_size is None else check_int("batch_size", batch_size, min=1)
    cf, cl = c.to(torch.get_default_dtype()), c.long()
    ce = nn.functional.cross_entropy
    history = FitHistory("energy")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    counter = _StepCounter(callback)

    def losses(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e_y, e_c = model.energies(x[rows])
        concept = ce(-e_c.reshape(-1, 2), cl[rows].reshape(-1)) * model.k * model.lambda_c
        glob = ce(-model.global_energy(cf[rows]), y[rows]) * model.lambda_g
        return concept, ce(-e_y, y[rows]) + glob

    model.train()
    for _ in range(epochs):
        closs, tloss = _epoch(opt, n, size, gen, losses, counter)
        history.concept_loss.append(closs)
        history.task_loss.append(tloss)
    model.eval()
    return history

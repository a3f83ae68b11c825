r"""Concept Activation Vectors (Kim et al. 2018, "Interpretability Beyond Feature
Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)", ICML, §3.1).

A CAV for concept C at layer l is the normal :math:`v_C` of a linear classifier that
separates the layer's activations :math:`a_l(x)` of concept examples (label 1) from those of
negative (random) examples (label 0), oriented towards the concept:

.. math:: \hat y(a) = \sigma(v_C^\top a + b), \qquad
          m_C(a) = \frac{v_C^\top a + b}{\lVert v_C \rVert}

(:math:`m_C` is the signed distance to the boundary, the concept margin of post-hoc CBMs,
Yuksekgonul et al. 2023). A :class:`CAV` remembers the layer it was trained on: applying it
to activations of another layer raises (a direction in one space means nothing in another).

Classifiers (``method=``):

- ``"logistic"`` (default): L2 logistic regression (C = ``C``, unpenalised intercept),
  Newton's method to convergence in float64: deterministic given the split.
- ``"svm"``: a linear soft-margin SVM, ``sklearn.svm.SVC(kernel="linear", C)`` (libsvm
  leaves the intercept unpenalised; liblinear's ``LinearSVC`` would penalise it and turn
  the direction), as in post-hoc CBMs.
- ``"sgd"``: ``sklearn.linear_model.SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3)``
  with ``random_state=seed``, the classifier of captum and tensorflow/tcav (both leave it
  unseeded; here it is seeded).

Split: seeded, stratified, ``test_size`` (0.33 as both references) held out for the
accuracy reported beside the CAV; ``balance=True`` first subsamples the larger class to the
size of the smaller (tensorflow/tcav does; captum does not). Every reference's CAV points
towards the concept (tensorflow/tcav labels the concept 0 and negates the weights; captum
returns ``[-w, w]`` by class order), so the orientation is the same in every mode.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynalens._optional import require
from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._checks import as_matrix
from dynalens.estimators.concepts._probe import fit_binary_probes

__all__ = ["CAV", "train_cav", "train_cavs"]

METHODS = ("logistic", "svm", "sgd")


@dataclass(frozen=True)
class CAV:
    """A concept activation vector with the layer it belongs to.

    Attributes:
        vector: weights (d,) float64, pointing towards the concept.
        intercept: the classifier's intercept b.
        layer: name of the layer whose (flattened) activations it was trained on.
        concept: the concept's name.
        accuracy: held-out accuracy of the classifier (NaN without a test split).
        method: ``"logistic"``, ``"svm"`` or ``"sgd"``.
        n_train: rows the classifier was trained on.
        margin_stats: mean and sd of the margins of the training rows (concept and
            negative rows separately, and all together).
        settings: split, seed, C and the other parameters used.
    """

    vector: torch.Tensor
    intercept: float
    layer: str
    concept: str
    accuracy: float
    method: str
    n_train: int
    margin_stats: Mapping[str, float] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def direction(self) -> torch.Tensor:
        """The unit vector v / ‖v‖."""
        return self.vector / self.vector.norm().clamp_min(1e-300)

    def check_layer(self, layer: str | None) -> None:
        """Raise unless ``layer`` is the layer this CAV was trained on (``None`` skips)."""
        if layer is not None and layer != self.layer:
            raise InvalidInputError(
                f"the CAV of concept {self.concept!r} was trained on layer {self.layer!r} "
                f"but is applied to layer {layer!r}; a CAV is a direction in one layer's "
                "activation space and means nothing in another. Train a CAV on "
                f"{layer!r} (train_cav(..., layer={layer!r})) or apply this one to "
                f"{self.layer!r}."
            )

    def margin(self, activations: Any, *, layer: str | None = None) -> torch.Tensor:
        """Signed distances (n,) to the boundary, (v·a + b)/‖v‖, of activations (n, d)
        of ``layer`` (checked against the CAV's own layer when given)."""
        self.check_layer(layer)
        a = _flat(activations, self.vector.shape[0], self.layer)
        return (a @ self.vector + self.intercept) / self.vector.norm()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``CAV.from_dict`` reads it back)."""
        return {
            "vector": self.vector.tolist(),
            "intercept": self.intercept,
            "layer": self.layer,
            "concept": self.concept,
            "accuracy": self.accuracy,
            "method": self.method,
            "n_train": self.n_train,
            "margin_stats": dict(self.margin_stats),
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CAV:
        """The CAV that :meth:`to_dict` described."""
        return cls(
            vector=torch.tensor(d["vector"], dtype=torch.float64),
            intercept=float(d["intercept"]),
            layer=str(d["layer"]),
            concept=str(d["concept"]),
            accuracy=float(d["accuracy"]),
            method=str(d["method"]),
            n_train=int(d["n_train"]),
            margin_stats=dict(d.get("margin_stats", {})),
            settings=dict(d.get("settings", {})),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the CAV (vector, layer, accuracy, settings) as JSON."""
        import json

        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CAV:
        """Read a CAV written by :meth:`save`."""
        import json

        with open(path) as f:
            return cls.from_dict(json.load(f))


def _flat(value: Any, d: int | None, layer: str) -> torch.Tensor:
    t = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
    t = t.detach().to("cpu", torch.float64)
    t = t.reshape(t.shape[0], -1) if t.ndim > 1 else t[:, None]
    if d is not None and t.shape[1] != d:
        raise InvalidInputError(
            f"activations have {t.shape[1]} features per row but the CAV of layer {layer!r} "
            f"has {d}; pass activations of the layer the CAV was trained on."
        )
    return as_matrix("activations", t)


def _split_rows(
    n_pos: int, n_neg: int, test_size: float, balance: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stratified seeded split: (train pos, test pos, train neg, test neg) row indices."""
    g = torch.Generator().manual_seed(seed)
    pos, neg = torch.randperm(n_pos, generator=g), torch.randperm(n_neg, generator=g)
    if balance:
        m = min(n_pos, n_neg)
        pos, neg = pos[:m], neg[:m]
    tp, tn = int(len(pos) * test_size), int(len(neg) * test_size)
    return pos[tp:], pos[:tp], neg[tn:], neg[:tn]


def _fit_sklearn(
    method: str, x: np.ndarray, y: np.ndarray, C: float, seed: int
) -> tuple[np.ndarray, float]:
    if method == "svm":
        svm = require("sklearn.svm", "a linear-SVM CAV")
        clf = svm.SVC(kernel="linear", C=C).fit(x, y)
    else:
        lm = require("sklearn.linear_model", "an SGD CAV")
        clf = lm.SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed).fit(x, y)
    return np.asarray(clf.coef_, dtype=np.float64).reshape(-1), float(clf.intercept_[0])


def train_cavs(
    concept: Any,
    negatives: list[Any],
    *,
    layer: str,
    name: str = "concept",
    method: str = "logistic",
    C: float = 1.0,
    test_size: float = 0.33,
    balance: bool = True,
    seed: int = 0,
) -> list[CAV]:
    """One CAV per negative set: concept activations (n_c, ...) against each negative
    set's activations, fitted together (batched Newton for ``method="logistic"``).
    Run r uses split seed ``seed + r``. See :func:`train_cav`."""
    method = check_option("method", method, METHODS)
    C = check_float("C", C, min=0.0, min_inclusive=False)
    test_size = check_float("test_size", test_size, min=0.0, max=0.9)
    balance = check_bool("balance", balance)
    seed = check_int("seed", seed)
    if not negatives:
        raise InvalidInputError("train_cavs needs at least one negative set; got none.")
    pos = _flat(concept, None, layer)
    negs = [_flat(n_, pos.shape[1], layer) for n_ in negatives]
    for what, rows in [("concept", pos.shape[0]), *[("negative", n_.shape[0]) for n_ in negs]]:
        if rows < 2:
            raise InvalidInputError(
                f"a CAV needs at least 2 {what} examples; got {rows}. Pass more examples."
            )
    plans = [_split_rows(len(pos), len(neg), test_size, balance, seed + r) for r, neg in
             enumerate(negs)]  # fmt: skip
    xs, ys = [], []
    for (trp, _, trn, _), neg in zip(plans, negs):
        xs.append(torch.cat([pos[trp], neg[trn]]))
        ys.append(torch.cat([torch.ones(len(trp)), torch.zeros(len(trn))]).double())
    weights: list[tuple[torch.Tensor, float]] = []
    if method == "logistic" and len({x.shape[0] for x in xs}) == 1:
        theta = fit_binary_probes(torch.stack(xs), torch.stack(ys), C=C)
        weights = [(t[:-1].clone(), float(t[-1])) for t in theta]
    elif method == "logistic":
        for x, y in zip(xs, ys):
            t = fit_binary_probes(x[None], y[None], C=C)[0]
            weights.append((t[:-1].clone(), float(t[-1])))
    else:
        for r, (x, y) in enumerate(zip(xs, ys)):
            coef, b = _fit_sklearn(method, x.numpy(), y.numpy(), C, seed + r)
            weights.append((torch.tensor(coef, dtype=torch.float64), b))
    cavs = []
    for r, ((w, b), (trp, tep, trn, ten), neg) in enumerate(zip(weights, plans, negs)):
        if not bool(w.abs().sum() > 0):
            raise InvalidInputError(
                f"the CAV of {name!r} (run {r}) is the zero vector: the concept and "
                "negative activations are not separated at all; check that they differ."
            )
        test_x = torch.cat([pos[tep], neg[ten]])
        test_y = torch.cat([torch.ones(len(tep)), torch.zeros(len(ten))]).double()
        acc = (
            float((((test_x @ w + b) > 0).double() == test_y).double().mean())
            if len(test_y) else float("nan")
        )  # fmt: skip
        m_pos = (pos[trp] @ w + b) / w.norm()
        m_neg = (neg[trn] @ w + b) / w.norm()
        m_all = torch.cat([m_pos, m_neg])
        stats = {
            "mean": float(m_all.mean()), "sd": float(m_all.std()),
            "concept_mean": float(m_pos.mean()), "negative_mean": float(m_neg.mean()),
        }  # fmt: skip
        cavs.append(
            CAV(
                vector=w, intercept=b, layer=layer, concept=name, accuracy=acc,
                method=method, n_train=len(trp) + len(trn), margin_stats=stats,
                settings={"C": C, "test_size": test_size, "balance": balance,
                          "seed": seed + r, "n_test": len(test_y)},
            )
        )  # fmt: skip
    return cavs


def train_cav(
    concept: Any,
    negative: Any,
    *,
    layer: str,
    name: str = "concept",
    method: str = "logistic",
    C: float = 1.0,
    test_size: float = 0.33,
    balance: bool = True,
    seed: int = 0,
) -> CAV:
    """Train one CAV: concept activations against negative activations of ``layer``.

    Args:
        concept: activations (n_c, ...) of concept examples (flattened per row).
        negative: activations (n_n, ...) of negative / random examples.
        layer: the layer's name (the CAV refuses other layers later).
        name: the concept's name.
        method: ``"logistic"`` (default), ``"svm"`` or ``"sgd"`` (module docstring).
        C: inverse regularisation of the logistic and SVM classifiers.
        test_size: held-out share (stratified) for the reported accuracy.
        balance: subsample the larger class to the smaller one first.
        seed: seed of the subsample and the split (and of the SGD classifier).

    Returns:
        The :class:`CAV`.

    Examples:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> pos = torch.randn(50, 4, generator=g) + torch.tensor([2.0, 0, 0, 0])
        >>> cav = train_cav(pos, torch.randn(50, 4, generator=g), layer="fc1", name="stripes")
        >>> bool(cav.direction[0] > 0.9), cav.layer
        (True, 'fc1')
    """
    return train_cavs(
        concept, [negative], layer=layer, name=name, method=method, C=C,
        test_size=test_size, balance=balance, seed=seed,
    )[0]  # fmt: skip

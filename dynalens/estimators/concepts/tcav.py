r"""TCAV: testing with concept activation vectors (Kim et al. 2018, ICML, §3.2-3.3).

For a layer l with activations :math:`a = a_l(x)`, a CAV :math:`v_C` (:mod:`.cav`) and a
differentiable :math:`h` of the layer's output, the conceptual sensitivity of input x is
the directional derivative

.. math:: S_{C}(x) = \nabla_a h(a_l(x)) \cdot v_C,

and the TCAV score over the inputs X_k of target class k is a share of signs:

- ``sign="logit_pos"`` (captum, PyC): h = the target logit, score = |{x: S > 0}| / |X_k|;
- ``sign="loss_neg"`` (tensorflow/tcav): h = the cross-entropy of the target,
  score = |{x: S < 0}| / |X_k|.

The two differ in general: :math:`\nabla_a \mathrm{CE} = -\nabla_a z_k + \sum_j p_j
\nabla_a z_j` mixes every logit; they agree when only the target logit depends on a.
``magnitude`` is the mean of S (captum's ``magnitude``, whose docstring instead describes
:math:`\sum |S^+| / \sum |S|`); by default S uses the unit direction, so it is scale-free
(``compat="captum"``: the raw classifier weights, as captum).

Significance (Kim et al. §3.3): R runs, each with a fresh random negative set: the scores
of concept-vs-random CAVs against those of random-vs-random CAVs (the null), a two-sample
t-test (Welch by default; Student's as both references with ``compat``), then a
multiple-comparison correction over every (concept, layer) tested (Benjamini–Hochberg by
default; Holm, Bonferroni or none); significant iff the adjusted p <= ``alpha``.
R < 2 gives no test (NaN p-value, a warning). Each result carries the CAVs' held-out
accuracies; a concept whose mean CAV accuracy is below ``min_accuracy`` is flagged
(``details["low_accuracy"]``): its direction is mostly noise.

Uncertainty: the interval is the 95 % Student-t interval of the mean score over the R runs;
``seed_spread`` holds the runs (sd with ddof 1; ``details["sd_ddof0"]`` as tensorflow/tcav
reports). Random sets are drawn from the ``random`` pool with ``seed``: run r takes two
disjoint random subsets A_r, B_r (each the size of the concept set, or ``n_random``);
concept-vs-B_r and A_r-vs-B_r give the pair of scores.

``compat``: ``"tf_tcav"`` = loss_neg, SGD CAVs on balanced sets, Student's t, no
correction; ``"captum"`` = logit_pos, SGD CAVs without balancing, raw-weight magnitude,
Student's t, no correction.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dynalens._optional import require
from dynalens._validation import check_bool, check_float, check_int, check_option
from dynalens.errors import InvalidInputError
from dynalens.estimators.concepts._layers import layer_activations, layer_gradients
from dynalens.estimators.concepts._multitest import CORRECTIONS, adjust_pvalues
from dynalens.estimators.concepts._result import ConceptResult, seed_spread
from dynalens.estimators.concepts.cav import CAV, METHODS, train_cavs

__all__ = ["TCAV", "TCAVReport", "directional_derivatives", "tcav", "tcav_scores"]

SIGNS = ("logit_pos", "loss_neg")
COMPAT: dict[str, dict[str, Any]] = {
    "tf_tcav": {"sign": "loss_neg", "method": "sgd", "balance": True, "test": "student",
                "correction": "none", "raw_magnitude": False},
    "captum": {"sign": "logit_pos", "method": "sgd", "balance": False, "test": "student",
               "correction": "none", "raw_magnitude": True},
}  # fmt: skip


def _targets(target: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(target).to(torch.int64)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise InvalidInputError(
            f"target must be one class index or one per input ({n}); got shape {tuple(t.shape)}."
        )
    return t


def directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    cavs: Sequence[CAV] | torch.Tensor,
    target: Any,
    *,
    sign: str = "logit_pos",
    unit: bool = True,
    batch_size: int = 512,
) -> torch.Tensor:
    """S (n, r): gradients of h (target logit or target cross-entropy, by ``sign``) at
    ``layer`` for each input, dotted with each CAV (unit directions if ``unit``; a (r, d)
    tensor of directions is used as given). CAVs of another layer are refused."""
    sign = check_option("sign", sign, SIGNS)
    targets = _targets(target, len(inputs))
    if torch.is_tensor(cavs):
        v = cavs.to(torch.float64)
    else:
        for cav in cavs:
            cav.check_layer(layer)
        v = torch.stack([c.direction if unit else c.vector for c in cavs])

    def objective(out: torch.Tensor, rows: slice) -> torch.Tensor:
        t = targets[rows]
        if sign == "logit_pos":
            return out.gather(1, t[:, None])[:, 0]
        return nn.functional.cross_entropy(out, t, reduction="none")

    grads = layer_gradients(model, inputs, layer, objective, batch_size=batch_size)
    if grads.shape[1] != v.shape[1]:
        raise InvalidInputError(
            f"layer {layer!r} has {grads.shape[1]} features but the CAVs have {v.shape[1]}; "
            "pass CAVs trained on this layer's activations."
        )
    return grads @ v.T


def tcav_scores(s: torch.Tensor, sign: str = "logit_pos") -> torch.Tensor:
    """TCAV scores (r,) from directional derivatives S (n, r): share of S > 0
    (``logit_pos``) or of S < 0 (``loss_neg``)."""
    return ((s > 0) if sign == "logit_pos" else (s < 0)).double().mean(0)


def _ttest(a: torch.Tensor, b: torch.Tensor, equal_var: bool) -> float:
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if float(a.var()) == 0.0 and float(b.var()) == 0.0:
        return 1.0 if float(a.mean()) == float(b.mean()) else 0.0
    stats = require("scipy.stats", "TCAV's t-test")
    with warnings.catch_warnings():  # one side constant: scipy warns, the test is defined
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a.numpy(), b.numpy(), equal_var=equal_var).pvalue)


def _t_interval(v: torch.Tensor) -> tuple[float, float] | None:
    if len(v) < 2:
        return None
    stats = require("scipy.stats", "TCAV's interval")
    half = float(stats.t.ppf(0.975, len(v) - 1)) * float(v.std()) / len(v) ** 0.5
    return float(v.mean()) - half, float(v.mean()) + half


@dataclass(frozen=True)
class TCAVReport:
    """TCAV results per (concept, layer): :class:`ConceptResult` with value = mean score,
    interval, seed spread and ``details`` (p_value, p_adjusted, significant, magnitude,
    cav_accuracy, low_accuracy, scores, null_scores)."""

    results: Mapping[tuple[str, str], ConceptResult]
    params: Mapping[str, Any]

    def __getitem__(self, key: tuple[str, str]) -> ConceptResult:
        if key not in self.results:
            raise InvalidInputError(f"no TCAV result for {key!r}; have {list(self.results)}.")
        return self.results[key]

    def significant(self) -> list[tuple[str, str]]:
        """(concept, layer) pairs significant after the correction."""
        return [k for k, r in self.results.items() if r.details["significant"]]

    def table(self) -> list[dict[str, Any]]:
        """One JSON-able row per (concept, layer)."""
        rows = []
        for (concept, layer), r in self.results.items():
            d = r.details
            rows.append({
                "concept": concept, "layer": layer, "score": r.value,
                "low": r.interval[0] if r.interval else None,
                "high": r.interval[1] if r.interval else None,
                "sd_ddof0": d["sd_ddof0"], "null_mean": d["null_mean"],
                "p_value": d["p_value"], "p_adjusted": d["p_adjusted"],
                "significant": d["significant"], "magnitude": d["magnitude"],
                "cav_accuracy": d["cav_accuracy"], "low_accuracy": d["low_accuracy"],
            })  # fmt: skip
        return rows


class TCAV:
    """TCAV with random-concept t-tests and a multiple-comparison correction.

    Parameters
    ----------
    model : nn.Module
        Any classifier returning logits (n, T); in eval mode.
    layers : str or sequence of str
        Names of ``model.named_modules()`` whose outputs the CAVs live in.
    n_runs : int
        R, random negative sets per concept (default 20; tensorflow/tcav uses 5 or 100).
    n_random : int or None
        Size of each random set (default: the concept set's size).
    sign : {"logit_pos", "loss_neg"}
    method : {"logistic", "svm", "sgd"}
        The CAV classifier (:func:`~dynalens.estimators.concepts.cav.train_cav`).
    C, test_size, balance
        Passed to the CAV classifier and its seeded split.
    test : {"welch", "student"}
    correction : {"bh", "holm", "bonferroni", "none"}
    alpha : float
        Significance level after the correction (0.05).
    min_accuracy : float
        CAVs with mean held-out accuracy below this are flagged (0.6).
    seed : int
        Seed of the random sets and the CAV splits.
    compat : {None, "tf_tcav", "captum"}
        A reference's conventions (overrides sign, method, balance, test, correction).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> x, concept, pool = torch.randn(40, 4), torch.randn(30, 4) + 2, torch.randn(200, 4)
    >>> report = tcav(model, x, 1, {"up": concept}, pool, layers="0", n_runs=5)
    >>> 0.0 <= report["up", "0"].value <= 1.0
    True
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        *,
        n_runs: int = 20,
        n_random: int | None = None,
        sign: str = "logit_pos",
        method: str = "logistic",
        C: float = 1.0,
        test_size: float = 0.33,
        balance: bool = True,
        test: str = "welch",
        correction: str = "bh",
        alpha: float = 0.05,
        min_accuracy: float = 0.6,
        batch_size: int = 512,
        seed: int = 0,
        compat: str | None = None,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.layers = layers
        self.n_runs = n_runs
        self.n_random = n_random
        self.sign = sign
        self.method = method
        self.C = C
        self.test_size = test_size
        self.balance = balance
        self.test = test
        self.correction = correction
        self.alpha = alpha
        self.min_accuracy = min_accuracy
        self.batch_size = batch_size
        self.seed = seed
        self.compat = compat
        self.progress = progress

    def _settings(self) -> dict[str, Any]:
        s = {
            "sign": check_option("sign", self.sign, SIGNS),
            "method": check_option("method", self.method, METHODS),
            "balance": check_bool("balance", self.balance),
            "test": check_option("test", self.test, ("welch", "student")),
            "correction": check_option("correction", self.correction, CORRECTIONS),
            "raw_magnitude": False,
        }
        if self.compat is not None:
            s.update(COMPAT[check_option("compat", self.compat, tuple(COMPAT))])
        s.update({
            "n_runs": check_int("n_runs", self.n_runs, min=1),
            "C": check_float("C", self.C, min=0.0, min_inclusive=False),
            "test_size": check_float("test_size", self.test_size, min=0.0, max=0.9),
            "alpha": check_float("alpha", self.alpha, min=0.0, max=1.0),
            "min_accuracy": check_float("min_accuracy", self.min_accuracy, min=0.0, max=1.0),
            "seed": check_int("seed", self.seed), "compat": self.compat,
            "layers": [self.layers] if isinstance(self.layers, str) else list(self.layers),
        })  # fmt: skip
        return s

    @staticmethod
    def random_draws(n_pool: int, m: int, n_runs: int, seed: int) -> list[torch.Tensor]:
        """Row indices (2m,) into the random pool for each run: A_r = the first m,
        B_r = the last m (disjoint); what :meth:`fit` draws with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        return [torch.randperm(n_pool, generator=g)[: 2 * m] for _ in range(n_runs)]

    def fit(self, concepts: Mapping[str, torch.Tensor], random: torch.Tensor) -> TCAV:
        """Train R concept-vs-random CAVs per concept and layer, and R random-vs-random
        CAVs per layer (``cavs_[layer][concept]``, ``null_cavs_[layer]``).

        Args:
            concepts: concept name -> example inputs of that concept.
            random: a pool of random inputs the negative sets are drawn from.
        """
        s = self.settings_ = self._settings()
        if not concepts:
            raise InvalidInputError("TCAV.fit needs at least one concept; got none.")
        sizes = {name: len(x) for name, x in concepts.items()}
        m = self.n_random if self.n_random is not None else max(sizes.values())
        m = check_int("n_random", m, min=2)
        if len(random) < 2 * m:
            raise InvalidInputError(
                f"the random pool has {len(random)} inputs but each run draws two disjoint "
                f"random sets of {m}; pass at least {2 * m} random inputs or set n_random="
                f"{len(random) // 2}."
            )
        draws = self.random_draws(len(random), m, s["n_runs"], s["seed"])
        kw = {"method": s["method"], "C": s["C"], "test_size": s["test_size"],
              "balance": s["balance"], "seed": s["seed"]}  # fmt: skip
        self.cavs_: dict[str, dict[str, list[CAV]]] = {}
        self.null_cavs_: dict[str, list[CAV]] = {}
        bar = tqdm(total=len(s["layers"]) * (len(concepts) + 1), desc="CAVs",
                   disable=not self.progress)  # fmt: skip
        for layer in s["layers"]:
            pool = layer_activations(self.model, random, layer, batch_size=self.batch_size)
            a_sets = [pool[d[:m]] for d in draws]
            b_sets = [pool[d[m:]] for d in draws]
            self.cavs_[layer] = {}
            for name, x in concepts.items():
                acts = layer_activations(self.model, x, layer, batch_size=self.batch_size)
                self.cavs_[layer][name] = train_cavs(acts, b_sets, layer=layer, name=name, **kw)
                bar.update()
            null = [
                train_cavs(a, [b], layer=layer, name=f"random{r}", **kw)[0]
                for r, (a, b) in enumerate(zip(a_sets, b_sets))
            ]
            self.null_cavs_[layer] = null
            bar.update()
        bar.close()
        return self

    def estimate(self, inputs: torch.Tensor, target: Any) -> TCAVReport:
        """TCAV scores and their significance for ``inputs`` (the target class's
        examples) and ``target`` (a class index or one per input)."""
        if not hasattr(self, "cavs_"):
            raise InvalidInputError("call TCAV.fit(concepts, random) before estimate().")
        s = self.settings_
        unit = not s["raw_magnitude"]
        raw: dict[tuple[str, str], dict[str, Any]] = {}
        for layer, by_concept in self.cavs_.items():
            null = self.null_cavs_[layer]
            names = list(by_concept)
            allcavs = [c for n in names for c in by_concept[n]] + null
            sd = directional_derivatives(self.model, inputs, layer, allcavs, target,
                                         sign=s["sign"], unit=unit,
                                         batch_size=self.batch_size)  # fmt: skip
            scores = tcav_scores(sd, s["sign"])
            r = s["n_runs"]
            null_scores = scores[len(names) * r :]
            for i, name in enumerate(names):
                sc = scores[i * r : (i + 1) * r]
                mag = sd[:, i * r : (i + 1) * r].mean(0)
                acc = torch.tensor([c.accuracy for c in by_concept[name]], dtype=torch.float64)
                raw[name, layer] = {
                    "scores": sc, "null_scores": null_scores, "magnitude": mag,
                    "cav_accuracy": acc,
                    "p_value": _ttest(sc, null_scores, equal_var=s["test"] == "student"),
                }  # fmt: skip
        if s["n_runs"] < 2:
            warnings.warn(
                f"n_runs={s['n_runs']}: a t-test needs at least 2 runs per side, so no "
                "p-values are computed (NaN) and nothing is marked significant.",
                stacklevel=2,
            )
        p_adj = adjust_pvalues(
            torch.tensor([v["p_value"] for v in raw.values()], dtype=torch.float64),
            s["correction"],
        )
        results = {}
        for (key, v), pa in zip(raw.items(), p_adj.tolist()):
            sc, acc = v["scores"], v["cav_accuracy"]
            mean_acc = float(acc.nanmean())
            results[key] = ConceptResult(
                value=float(sc.mean()),
                metric="tcav",
                per_concept=sc,
                interval=_t_interval(sc),
                seed_spread=seed_spread(sc.tolist()),
                n=len(inputs),
                params={k: s[k] for k in s if k != "layers"},
                details={
                    "p_value": v["p_value"], "p_adjusted": pa,
                    "significant": bool(pa == pa and pa <= s["alpha"]),
                    "sd_ddof0": float(sc.std(unbiased=False)),
                    "null_mean": float(v["null_scores"].mean()),
                    "null_scores": v["null_scores"], "scores": sc,
                    "magnitude": float(v["magnitude"].mean()),
                    "cav_accuracy": mean_acc, "cav_accuracies": acc,
                    "low_accuracy": bool(mean_acc < s["min_accuracy"]),
                },
            )  # fmt: skip
        return TCAVReport(results=results, params=s)


def tcav(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Any,
    concepts: Mapping[str, torch.Tensor],
    random: torch.Tensor,
    *,
    layers: str | Sequence[str],
    **kwargs: Any,
) -> TCAVReport:
    """Functional shortcut: ``TCAV(model, layers, **kwargs).fit(concepts, random)
    .estimate(inputs, target)``; see :class:`TCAV`."""
    return TCAV(model, layers, **kwargs).fit(concepts, random).estimate(inputs, target)

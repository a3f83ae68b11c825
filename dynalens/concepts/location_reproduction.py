r"""Reproduction of Furby et al. 2024, "Can we Constrain Concept Bottleneck Models to Learn
Semantically Meaningful Input Features?" (arXiv 2402.00912), on synthetic images.

Claim: when concepts always co-occur, a CBM's concept predictions attribute to the wrong
input features (a concept can be read off its partner's pixels); with instance-level
labels and concepts that do not always co-occur, they attribute to the right ones.

Setting (``dynalens reproduce concept-location`` / :func:`reproduce_concept_location`):
multi-object images (:func:`~dynalens.concepts.data.multi_shapes.make_multi_shapes`,
24×24, four object kinds in a 2×2 grid, pairs (circle, square) and (triangle, cross)
co-occurring with strength ρ), instance-level labels at several ρ and class-level labels
(every image gets its class's majority concepts) at ρ = 0, the sweep of guide §3.10; per
run a small CNN concept encoder (three 3×3 conv
layers with batch norm, global max pooling, a linear layer to the 4 concept logits) and a
linear head, trained in Koh et al.'s independent mode with Adam. Evaluation on a test
set with **independent** concepts (ρ = 0), so that partners can be told apart:

- concept accuracy and the Oracle Impurity Score (paired logistic probes) with intervals;
- location of grad × input maps of each concept logit
  (:func:`~dynalens.estimators.concepts.concept_activation_maps`) against the concept's own
  mask (:func:`~dynalens.estimators.concepts.concept_location`): pointing-game hit and
  distance (pixels), share of positive saliency mass, CLM at α = 1; and the mass on the
  **partner's** mask (the wrong object);
- CEM@1 of the head (concepts driving the predicted class that are present).

Measured (full preset, 2 loaded CPU cores, ~75 s): pointing on the own object 0.97 at
ρ = 0 vs 0.74 at ρ = 1, partner-object mass 0.29 vs 0.62, concept accuracy 0.97 vs 0.76,
OIS 0.21 vs 0.44, CEM@1 0.94 vs 0.63; class-level labels at ρ = 0: pointing 0.56, accuracy
0.55. CLM (object-centre point in the top 1/12) and the own-object mass do **not** separate
ρ = 0 from ρ = 1 (0.50 vs 0.68 and 0.64 vs 0.62): the ρ = 1 model still responds to the
own object and adds the partner, and a centre point rewards blob-like maps over the
edge-like maps of the ρ = 0 model.

Writes to ``out`` (default ``out/concept-location``): ``store.zarr`` (one run per setting: the
per-epoch losses and the final metrics in the scalar table), ``concept_location.html/.png``
and ``results.json``. The paper's own figures use playing cards and CheXpert; here the
check of guide §3.10 is run on shapes, and the paper's localisation score is not used
(unverified; the pointing game of the authors' earlier code and saliency mass are).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynalens._provenance import machine
from dynalens.concepts.data.multi_shapes import make_multi_shapes
from dynalens.concepts.models import ConceptBottleneckModel, fit_cbm
from dynalens.probe.store_writer import is_store_root

__all__ = ["FULL", "QUICK", "LocationConfig", "concept_cnn", "reproduce_concept_location"]

CLAIM = (
    "with co-occurring concepts the concept predictions attribute to the wrong pixels; "
    "breaking the co-occurrence makes them attribute to the right ones (Furby et al. 2024)"
)


@dataclass(frozen=True)
class LocationConfig:
    """Settings of :func:`reproduce_concept_location` (presets :data:`FULL`, :data:`QUICK`)."""

    runs: tuple[tuple[str, float], ...] = (
        ("instance", 0.0), ("instance", 0.8), ("instance", 1.0), ("class", 0.0),
    )  # fmt: skip
    n_train: int = 2000
    n_test: int = 500
    size: int = 24
    kinds: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    pairs: tuple[tuple[int, int], ...] = ((0, 1), (2, 3))
    width: int = 16
    epochs: int = 6
    batch_size: int = 64
    lr: float = 1e-2
    method: str = "grad_x_input"
    n_boot: int = 200
    seed: int = 0


FULL = LocationConfig()
QUICK = replace(FULL, runs=(("instance", 0.0), ("instance", 1.0), ("class", 0.0)), n_train=192,
                n_test=96, epochs=1, n_boot=20)  # fmt: skip


def concept_cnn(k: int, width: int = 16) -> nn.Sequential:
    """The concept encoder: conv(3→w)-BN-ReLU-pool, conv(w→2w)-BN-ReLU-pool,
    conv(2w→2w)-ReLU, global max pool, linear to k concept logits."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(2 * width, k),
    )  # fmt: skip


def reproduce_concept_location(
    out: str | os.PathLike[str] | None = None,
    *,
    quick: bool = False,
    config: LocationConfig | None = None,
) -> dict[str, Any]:
    """Run the reproduction; returns what ``results.json`` holds, plus ``files``.

    Args:
        out: output folder (default ``out/concept-location``); its old store is replaced.
        quick: the small preset (three runs of 192 images, one epoch; seconds) for tests
            and notebooks; the full one takes about 30-40 s per run on 2 loaded CPU cores.
        config: explicit settings (overrides ``quick``).

    Returns:
        A dict with ``summary`` (one sentence), ``runs`` (per annotation and ρ, keyed
        ``"instance_rho0"``, ...: concept accuracy, OIS,
        location scores with 95 % intervals, per-concept values, training losses),
        ``config``, ``claim``, ``files``.
    """
    from dynalens.concepts.location_figures import plot_concept_location
    from dynalens.figures import save_figure
    from dynalens.probe.recorder import Recorder

    cfg = config if config is not None else (QUICK if quick else FULL)
    folder = Path(out if out is not None else Path("out") / "concept-location")
    store_path = folder / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    started = time.time()
    torch.set_num_threads(1)
    data_kw: dict[str, Any] = {"size": cfg.size, "kinds": cfg.kinds, "pairs": cfg.pairs}
    test = make_multi_shapes(cfg.n_test, rho=0.0, seed=cfg.seed + 1000, **data_kw)
    runs: dict[str, Any] = {}
    examples: dict[str, torch.Tensor] = {}
    try:
        for annotation, rho in cfg.runs:
            train = make_multi_shapes(cfg.n_train, rho=rho, annotation=annotation,
                                      seed=cfg.seed, **data_kw)  # fmt: skip
            torch.manual_seed(cfg.seed)
            model = ConceptBottleneckModel(
                concept_cnn(len(cfg.kinds), cfg.width), nn.Linear(len(cfg.kinds), 3)
            )
            t0 = time.time()
            hist = fit_cbm(model, train.x, train.c, train.y, mode="independent",
                           epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                           seed=cfg.seed)  # fmt: skip
            entry, maps = _evaluate(model, test, cfg)
            entry["rho"], entry["annotation"] = rho, annotation
            entry["train_s"] = time.time() - t0
            entry["concept_loss"] = hist.concept_loss[: cfg.epochs]
            entry["task_loss"] = hist.task_loss[cfg.epochs :]
            key = f"{annotation}_rho{rho:g}".replace(".", "p")
            runs[key] = entry
            examples[key] = maps
            rec = Recorder(model, store_path, sites="encoder.0", every=lambda s: False,
                           run=key, config={"rho": rho, "annotation": annotation,
                                            **asdict(cfg)})  # fmt: skip
            try:
                for epoch, loss in enumerate(entry["concept_loss"], start=1):
                    rec.log(epoch, concept_loss=loss)
                for epoch, loss in enumerate(entry["task_loss"], start=1):
                    rec.log(cfg.epochs + epoch, task_loss=loss)
                rec.log(2 * cfg.epochs, **_scalars(entry))
            finally:
                rec.close()
    finally:
        torch.set_num_threads(threads)
    wall = time.time() - started
    fig = plot_concept_location(runs, test, examples, cfg.kinds, cfg.pairs)
    files = save_figure(fig, folder / "concept_location")
    results: dict[str, Any] = {
        "name": "concept-location",
        "title": "Furby et al. 2024: co-occurring concepts attribute to the wrong pixels",
        "claim": CLAIM,
        "quick": quick,
        "config": asdict(cfg),
        "summary": summarize(runs),
        "runs": runs,
        "machine": machine(),
        "wall_s": wall,
        "store": str(store_path),
    }  # fmt: skip
    results["files"] = [str(f) for f in files] + [str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(_clean(results), indent=2))
    return results


def _evaluate(
    model: ConceptBottleneckModel, test: Any, cfg: LocationConfig
) -> tuple[dict[str, Any], torch.Tensor]:
    from dynalens.estimators.concepts import (
        concept_accuracy,
        concept_activation_maps,
        concept_existence,
        concept_location,
        oracle_impurity_score,
    )

    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model.encoder(test.x))
    maps = concept_activation_maps(model.encoder, test.x, method=cfg.method)
    k = len(cfg.kinds)
    partner = list(range(k))
    for a, b in cfg.pairs:
        partner[a], partner[b] = b, a
    paired = torch.tensor([partner[j] != j for j in range(k)])
    partner_masks = test.masks[:, partner] & paired[None, :, None, None]
    boot = {"n_boot": cfg.n_boot, "seed": cfg.seed}
    results = {
        "concept_accuracy": concept_accuracy(test.c, prob, **boot),
        "ois": oracle_impurity_score(prob, test.c, n_seeds=1, **boot),
        "pointing": concept_location(maps, test.masks, score="pointing", **boot),
        "pointing_distance": concept_location(maps, test.masks, score="distance", **boot),
        "mass_own": concept_location(maps, test.masks, score="mass", **boot),
        "clm": concept_location(maps, test.masks, score="clm", **boot),
        "mass_partner": concept_location(maps, partner_masks, score="mass", **boot),
        "cem@1": concept_existence(prob, _head_weight(model), test.c_full,
                                   y_true=test.y, **boot),
    }  # fmt: skip
    entry: dict[str, Any] = {}
    for name, res in results.items():
        per = res.per_concept
        entry[name] = {
            "value": res.value,
            "interval": list(res.interval) if res.interval is not None else None,
            "per_concept": [] if per is None else [float(v) for v in per.flatten()[:k]],
        }
        if "chance" in res.details:
            entry[name]["chance"] = res.details["chance"]
    return entry, maps


def _head_weight(model: ConceptBottleneckModel) -> torch.Tensor:
    """The linear head's weights as (k, T)."""
    head = model.head
    assert isinstance(head, nn.Linear)  # built above, not user input
    return head.weight.detach().T


def _scalars(entry: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, res in entry.items():
        if isinstance(res, dict) and "value" in res:
            key = name.replace("@", "_at_")
            out[f"final/{key}"] = res["value"]
            if res["interval"] is not None:
                out[f"final/{key}_low"], out[f"final/{key}_high"] = res["interval"]
    return out


def summarize(runs: dict[str, Any]) -> str:
    """One sentence: own-object pointing, partner-object mass and concept accuracy at the
    lowest and highest ρ of the instance-label runs, and of the class-label runs."""
    keys = sorted(_instance_keys(runs), key=lambda r: runs[r]["rho"])
    lo, hi = runs[keys[0]], runs[keys[-1]]

    def fmt(entry: dict[str, Any], name: str) -> str:
        r = entry[name]
        low, high = r["interval"] if r["interval"] is not None else (math.nan, math.nan)
        return f"{r['value']:.2f} [{low:.2f}, {high:.2f}]"

    text = (
        f"pointing game on the concept's own object: {fmt(lo, 'pointing')} at rho = "
        f"{lo['rho']:g} vs {fmt(hi, 'pointing')} at rho = {hi['rho']:g}; share of saliency "
        f"mass on the co-occurring partner's object: {fmt(lo, 'mass_partner')} vs "
        f"{fmt(hi, 'mass_partner')}; concept accuracy on independent test concepts: "
        f"{fmt(lo, 'concept_accuracy')} vs {fmt(hi, 'concept_accuracy')}"
    )
    for entry in (runs[r] for r in runs if runs[r]["annotation"] == "class"):
        text += (
            f"; class-level labels at rho = {entry['rho']:g}: pointing {fmt(entry, 'pointing')}, "
            f"concept accuracy {fmt(entry, 'concept_accuracy')}"
        )
    return text + "."


def _instance_keys(runs: dict[str, Any]) -> list[str]:
    """The instance-label runs (all runs if there are none)."""
    keys = [r for r in runs if runs[r]["annotation"] == "instance"]
    return keys or list(runs)


def _clean(v: Any) -> Any:
    """JSON-safe copy: NaN / inf as strings, tuples as lists."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v

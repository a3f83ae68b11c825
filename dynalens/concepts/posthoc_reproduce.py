r"""``dynalens reproduce posthoc-cbm``: post-hoc CBMs (Yuksekgonul et al. 2023) on synthetic
shapes with a spurious background.

Claim checked: a post-hoc CBM built on a backbone's embeddings keeps most of the backbone's
accuracy; its sparse head trained by the reference's SGD varies strongly with the seed
(27–76 % in the reference setting), the deterministic elastic-net fit does not; and a global
edit that removes the spurious background concept from the head raises accuracy when the
background-label correlation flips at test time.

Setting: :func:`~dynalens.concepts.data.make_shapes` images whose background brightness
encodes the class in 90 % of training images (``spurious=0.9``); test images tied to the
class (in distribution), and the same images with the background repainted to the level of
class y + 2 (flipped). Backbone: a small CNN trained on the task (its penultimate layer is
the embedding); the bank holds the 12 object concepts and two background concepts (bits of
the background level, read off the image border). Accuracy intervals: bootstrap over test
rows; spreads: over bank seeds (the 50 + 50 CAV samples) and over SGD seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._provenance import machine
from dynalens.concepts.data import ConceptData, make_shapes
from dynalens.concepts.models.posthoc import fit_posthoc_cbm, learn_concept_bank
from dynalens.concepts.models.posthoc_edit import finetune_head, prune_concepts
from dynalens.estimators.concepts._layers import layer_activations
from dynalens.estimators.concepts._probe import fit_multinomial_probe, predict_multinomial
from dynalens.estimators.concepts._result import seed_spread
from dynalens.estimators.concepts.task_accuracy import task_accuracy

__all__ = [
    "BACKGROUND_CONCEPTS",
    "ObjectAndBackground",
    "background_concepts",
    "border_level",
    "repaint_background",
    "reproduce_posthoc_cbm",
]

#: background brightness of class t in make_shapes (T = 4 classes)
LEVELS = 0.05 + 0.1 * torch.arange(4, dtype=torch.float32) / 3
BACKGROUND_CONCEPTS = ("background_high", "background_odd")


def border_level(x: torch.Tensor) -> torch.Tensor:
    """Median brightness (n,) of the image border: the background level (objects cover
    at most a few border pixels)."""
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], 2)
    return border.flatten(1).median(1).values


def background_concepts(x: torch.Tensor) -> torch.Tensor:
    """Two binary concepts (n, 2) of the background level index t: t >= 2 and t odd."""
    t = (border_level(x)[:, None] - LEVELS).abs().argmin(1)
    return torch.stack([t >= 2, t % 2 == 1], 1).float()


def repaint_background(data: ConceptData, shift: int, seed: int) -> torch.Tensor:
    """The images with every background pixel (outside the object masks) set to the level
    of class (y + shift) mod 4 plus the generator's pixel noise."""
    if data.masks is None:
        raise ValueError("repaint_background needs image data with masks (make_shapes).")
    g = torch.Generator().manual_seed(seed)
    obj = data.masks.any(1)[:, None].expand_as(data.x)
    level = LEVELS[(data.y + shift) % 4][:, None, None, None].expand_as(data.x)
    noise = float(data.settings.get("pixel_noise", 0.05))  # type: ignore[arg-type]
    return torch.where(obj, data.x, level + noise * torch.randn(data.x.shape, generator=g))


class ObjectAndBackground(nn.Module):
    """A fixed backbone whose embedding separates the object from the background: pooled
    pixels minus the border level (2×2 average pooling), and the border level itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = border_level(x)
        obj = nn.functional.avg_pool2d(x - b[:, None, None, None], 2).flatten(1)
        return torch.cat([obj, 10 * b[:, None]], 1)


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 36, 64), nn.ReLU(), nn.Linear(64, 4),
    )  # fmt: skip


EMBEDDING = "8"  # the ReLU after the 64-unit layer


@dataclass(frozen=True)
class Config:
    n_train: int
    n_test: int
    epochs: int
    bank_seeds: int
    sgd_seeds: int
    n_finetune: int = 50
    spurious: float = 0.9
    C: float = 0.01
    alpha: float = 1e-3
    sgd_alpha: float = 1e-5
    n_boot: int = 200
    seed: int = 0


QUICK = Config(n_train=1000, n_test=500, epochs=3, bank_seeds=2, sgd_seeds=4, n_boot=50)
FULL = Config(n_train=4000, n_test=2000, epochs=8, bank_seeds=10, sgd_seeds=30)


def _train_backbone(data: ConceptData, cfg: Config, progress: bool) -> nn.Module:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.epochs), desc="backbone", disable=not progress):
        for idx in torch.randperm(len(data.x), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            opt.step()
    return model.eval()


def _acc(y: torch.Tensor, logits: torch.Tensor, cfg: Config) -> dict[str, float]:
    r = task_accuracy(y, logits.detach(), n_boot=cfg.n_boot, seed=cfg.seed)
    low, high = r.interval if r.interval else (float("nan"), float("nan"))
    return {"accuracy": r.value, "low": low, "high": high}


def _linear_probe(
    emb: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's baseline: a multinomial logistic probe (C = 1) on the standardised
    embeddings; returns (theta, mean, sd)."""
    mean, sd = emb.mean(0), emb.std(0).clamp_min(1e-6)
    return fit_multinomial_probe((emb - mean) / sd, y, 4), mean, sd


def _study(
    name: str,
    backbone: nn.Module,
    layer: str | None,
    data: tuple[ConceptData, ConceptData, torch.Tensor],
    cfg: Config,
    writer: Any,
) -> dict[str, Any]:
    """Backbone probe, PCBMs over bank seeds, edits, the reference SGD head's spread."""
    train, test, flipped = data
    k = cfg.n_finetune
    y_eval = test.y[k:]

    def embed(x: torch.Tensor) -> torch.Tensor:
        if layer is None:
            with torch.no_grad():
                return backbone(x).reshape(len(x), -1).double()
        return layer_activations(backbone, x, layer)

    emb = embed(train.x)
    theta, mean, sd = _linear_probe(emb, train.y)

    def probe(x: torch.Tensor) -> torch.Tensor:
        return predict_multinomial(theta, (embed(x) - mean) / sd)

    base = {"in_distribution": _acc(y_eval, probe(test.x[k:]), cfg),
            "flipped": _acc(y_eval, probe(flipped[k:]), cfg)}  # fmt: skip
    names = [*train.names, *BACKGROUND_CONCEPTS]
    c = torch.cat([train.c, background_concepts(train.x)], 1)
    rows: list[dict[str, Any]] = []
    first: Any = None
    for s in range(cfg.bank_seeds):
        bank = learn_concept_bank(emb, c, names, layer=layer or "embedding", C=cfg.C,
                                  seed=cfg.seed + s)  # fmt: skip
        model = fit_posthoc_cbm(backbone, train.x, train.y, bank, layer=layer, alpha=cfg.alpha)
        edits = {
            "pruned": prune_concepts(model, list(BACKGROUND_CONCEPTS)),
            "pruned_renormalized": prune_concepts(model, list(BACKGROUND_CONCEPTS),
                                                  renormalize=True),
        }  # fmt: skip
        edits["pruned_finetuned"] = finetune_head(edits["pruned"], flipped[:k], test.y[:k])
        first = first or (bank, model, edits["pruned"])
        row: dict[str, Any] = {
            "bank_seed": cfg.seed + s, "cav_accuracy": float(bank.accuracies.mean()),
            "nonzero_weights": int((model.weight != 0).sum()),
            "in_distribution": _acc(y_eval, model(test.x[k:]), cfg)["accuracy"],
            "flipped": _acc(y_eval, model(flipped[k:]), cfg)["accuracy"],
        }  # fmt: skip
        for edit, m in edits.items():
            row[f"in_distribution_{edit}"] = _acc(y_eval, m(test.x[k:]), cfg)["accuracy"]
            row[f"flipped_{edit}"] = _acc(y_eval, m(flipped[k:]), cfg)["accuracy"]
        rows.append(row)
        writer.add_scalars(s, {f"{name}.{key}": float(v) for key, v in row.items()})
    bank, model, pruned = first
    sgd = []
    for s in range(cfg.sgd_seeds):
        m = fit_posthoc_cbm(backbone, train.x, train.y, bank, layer=layer, alpha=cfg.sgd_alpha,
                            solver="sgd", seed=s)  # fmt: skip
        sgd.append(_acc(y_eval, m(test.x[k:]), cfg)["accuracy"])
        writer.add_scalars(s, {f"{name}.sgd_in_distribution": sgd[-1]})
    margins = model.concepts(test.x).numpy().astype(np.float32)
    writer.write_record(
        len(rows), {f"activations/{name}.concept_margins": (margins, {"axes": ["row", "concept"]})}
    )
    keys = [key for key in rows[0] if key not in ("bank_seed",)]
    return {
        "backbone": base,
        "pcbm": {key: seed_spread([float(r[key]) for r in rows]) for key in keys},
        "per_seed": rows,
        "sgd_head": {"spread": seed_spread(sgd), "accuracies": sgd, "alpha": cfg.sgd_alpha},
        "cav_accuracy": dict(zip(bank.names, bank.accuracies.tolist())),
        "weights": {"head": model.weight.tolist(), "pruned": pruned.weight.tolist(),
                    "concepts": list(bank.names)},
    }  # fmt: skip


def reproduce_posthoc_cbm(
    out: str | os.PathLike[str] | None = None, *, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the reproduction; returns what ``results.json`` holds, plus ``files``.

    Args:
        out: output folder (default ``out/posthoc-cbm``); its old store is replaced.
        quick: the small preset (about a minute on 2 CPU cores) for tests and notebooks.
        progress: show progress bars.

    Returns:
        ``summary`` (one sentence), ``studies`` (per backbone: ``backbone`` linear-probe
        accuracy with bootstrap interval, ``pcbm`` spreads over bank seeds of every
        accuracy, ``per_seed``, ``sgd_head`` spread, ``cav_accuracy``, ``weights``),
        ``config``, ``files``, ``store``.
    """
    from dynalens.concepts.posthoc_figures import plot_accuracy, plot_head_weights
    from dynalens.figures import save_figure
    from dynalens.probe.store_writer import StoreWriter

    cfg = QUICK if quick else FULL
    folder = Path(out if out is not None else Path("out") / "posthoc-cbm")
    store_path = folder / "store.zarr"
    if store_path.exists():
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    started = time.time()
    torch.set_num_threads(1)
    try:
        train = make_shapes(cfg.n_train, spurious=cfg.spurious, seed=cfg.seed)
        test = make_shapes(cfg.n_test, spurious=1.0, seed=cfg.seed + 1)
        data = (train, test, repaint_background(test, shift=2, seed=cfg.seed))
        cnn = _train_backbone(train, cfg, progress)
        writer = StoreWriter(store_path, "posthoc-cbm", run_meta={"config": asdict(cfg)})
        studies = {
            "cnn": _study("cnn", cnn, EMBEDDING, data, cfg, writer),
            "object_background": _study("object_background", ObjectAndBackground(), None,
                                        data, cfg, writer),
        }  # fmt: skip
        writer.close()
    finally:
        torch.set_num_threads(threads)
    files: list[Path] = []
    files += save_figure(plot_accuracy(studies), folder / "accuracy")
    files += save_figure(plot_head_weights(studies), folder / "head_weights")
    parts = []
    for name, st in studies.items():
        p = st["pcbm"]
        parts.append(
            f"{name}: backbone probe {st['backbone']['in_distribution']['accuracy']:.3f} / "
            f"flipped {st['backbone']['flipped']['accuracy']:.3f}; PCBM "
            f"{p['in_distribution']['mean']:.3f} ± {p['in_distribution']['sd']:.3f} / flipped "
            f"{p['flipped']['mean']:.3f} -> pruned {p['flipped_pruned']['mean']:.3f}, "
            f"fine-tuned {p['flipped_pruned_finetuned']['mean']:.3f}; SGD head "
            f"{st['sgd_head']['spread']['min']:.3f}-{st['sgd_head']['spread']['max']:.3f}"
        )
    results: dict[str, Any] = {
        "name": "posthoc-cbm",
        "title": "Yuksekgonul et al. 2023: post-hoc concept bottleneck models",
        "quick": quick, "config": asdict(cfg), "summary": "; ".join(parts),
        "studies": studies,
        "machine": machine(),
        "wall_s": time.time() - started, "store": str(store_path),
    }  # fmt: skip
    results["files"] = [str(f) for f in files] + [str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results

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
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens.concepts.data import ConceptData, make_shapes
from dynalens.concepts.models.posthoc import fit_posthoc_cbm, learn_concept_bank
from dynalens.concepts.models.posthoc_edit import prune_concepts
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
    spurious: float = 0.9
    C: float = 0.01
    alpha: float = 1e-3
    n_boot: int = 200
    seed: int = 0


QUICK = Config(n_train=1000, n_test=500, epochs=3, bank_seeds=3, sgd_seeds=5, n_boot=50)
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


def reproduce_posthoc_cbm(
    out: str | os.PathLike[str] | None = None, *, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the reproduction; returns what ``results.json`` holds, plus ``files``.

    Args:
        out: output folder (default ``out/posthoc-cbm``); its old store is replaced.
        quick: the small preset (~30 s on 2 CPU cores) for tests and notebooks.
        progress: show progress bars.
    """
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
        flipped = repaint_background(test, shift=2, seed=cfg.seed)
        backbone = _train_backbone(train, cfg, progress)
        with torch.no_grad():
            base = {"in_distribution": _acc(test.y, backbone(test.x), cfg),
                    "flipped": _acc(test.y, backbone(flipped), cfg)}  # fmt: skip
        names = [*train.names, *BACKGROUND_CONCEPTS]
        c = torch.cat([train.c, background_concepts(train.x)], 1)
        from dynalens.estimators.concepts._layers import layer_activations

        emb = layer_activations(backbone, train.x, EMBEDDING)
        rows: list[dict[str, Any]] = []
        first = None
        for s in range(cfg.bank_seeds):
            bank = learn_concept_bank(emb, c, names, layer=EMBEDDING, C=cfg.C, seed=cfg.seed + s)
            model = fit_posthoc_cbm(backbone, train.x, train.y, bank, layer=EMBEDDING,
                                    alpha=cfg.alpha)  # fmt: skip
            edited = prune_concepts(model, list(BACKGROUND_CONCEPTS))
            first = first or (bank, model, edited)
            rows.append({
                "bank_seed": cfg.seed + s,
                "cav_accuracy": float(bank.accuracies.mean()),
                "in_distribution": _acc(test.y, model(test.x), cfg)["accuracy"],
                "flipped": _acc(test.y, model(flipped), cfg)["accuracy"],
                "flipped_edited": _acc(test.y, edited(flipped), cfg)["accuracy"],
                "in_distribution_edited": _acc(test.y, edited(test.x), cfg)["accuracy"],
                "nonzero_weights": int((model.weight != 0).sum()),
            })  # fmt: skip
        assert first is not None
        bank, model, edited = first
        sgd = []
        for s in range(cfg.sgd_seeds):
            m = fit_posthoc_cbm(backbone, train.x, train.y, bank, layer=EMBEDDING,
                                alpha=1e-5, solver="sgd", seed=s)  # fmt: skip
            sgd.append({"random_state": s,
                        "in_distribution": _acc(test.y, m(test.x), cfg)["accuracy"]})  # fmt: skip
        writer = StoreWriter(store_path, "posthoc-cbm", run_meta={"config": asdict(cfg)})
        margins = model.concepts(test.x).numpy().astype(np.float32)
        writer.write_record(
            0, {"activations/concept_margins": (margins, {"axes": ["row", "concept"]})}
        )
        for r in rows:
            writer.add_scalars(
                int(r["bank_seed"]), {k: float(v) for k, v in r.items() if k != "bank_seed"}
            )
        for r in sgd:
            writer.add_scalars(
                1000 + int(r["random_state"]), {"sgd_in_distribution": r["in_distribution"]}
            )
        writer.close()
    finally:
        torch.set_num_threads(threads)
    keys = ("in_distribution", "flipped", "flipped_edited", "in_distribution_edited")
    summary_rows = {k: seed_spread([r[k] for r in rows]) for k in keys}
    pc = summary_rows["in_distribution"]
    sgd_spread = seed_spread([r["in_distribution"] for r in sgd])
    files: list[Path] = []
    files += save_figure(_plot_accuracy(base, summary_rows, sgd_spread), folder / "accuracy")
    files += save_figure(_plot_weights(model, edited), folder / "head_weights")
    summary = (
        f"backbone {base['in_distribution']['accuracy']:.3f} in distribution, "
        f"{base['flipped']['accuracy']:.3f} with flipped backgrounds; PCBM "
        f"{pc['mean']:.3f} ± {pc['sd']:.3f}"
        f" over {cfg.bank_seeds} bank seeds, flipped {summary_rows['flipped']['mean']:.3f} -> "
        f"{summary_rows['flipped_edited']['mean']:.3f} after pruning the background concepts; "
        f"reference SGD head over {cfg.sgd_seeds} seeds: {sgd_spread['min']:.3f}-"
        f"{sgd_spread['max']:.3f} (sd {sgd_spread['sd']:.3f})"
    )
    results: dict[str, Any] = {
        "name": "posthoc-cbm",
        "title": "Yuksekgonul et al. 2023: post-hoc concept bottleneck models",
        "quick": quick, "config": asdict(cfg), "summary": summary,
        "backbone": base, "pcbm": summary_rows, "per_seed": rows,
        "sgd_head": {"spread": sgd_spread, "runs": sgd},
        "cav_accuracy": dict(zip(bank.names, bank.accuracies.tolist())),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": 1, "cpu_count": os.cpu_count()},
        "wall_s": time.time() - started, "store": str(store_path),
    }  # fmt: skip
    results["files"] = [str(f) for f in files] + [str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _plot_accuracy(base: dict[str, Any], pcbm: dict[str, Any], sgd: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    labels = ["backbone", "PCBM", "PCBM, background pruned", "PCBM, reference SGD head"]
    fig = go.Figure()
    for split, key_b, key_p, key_e in (("in distribution", "in_distribution", "in_distribution",
                                        "in_distribution_edited"),
                                       ("flipped background", "flipped", "flipped",
                                        "flipped_edited")):  # fmt: skip
        ys = [base[key_b]["accuracy"], pcbm[key_p]["mean"], pcbm[key_e]["mean"]]
        err = [0.0, pcbm[key_p]["sd"], pcbm[key_e]["sd"]]
        if key_b == "in_distribution":
            ys.append(sgd["mean"])
            err.append(sgd["sd"])
        fig.add_bar(name=split, x=labels[: len(ys)], y=ys, error_y={"type": "data", "array": err})
    fig.update_layout(
        title="Post-hoc CBM accuracy (error bars: sd over seeds)",
        barmode="group",
        xaxis_title="model",
        yaxis_title="test accuracy",
        yaxis_range=[0, 1],
    )
    return fig


def _plot_weights(model: Any, edited: Any) -> Any:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("head", "background pruned"))
    for col, m in ((1, model), (2, edited)):
        fig.add_heatmap(
            z=m.weight.numpy(),
            x=list(m.bank.names),
            y=[f"class {k}" for k in range(4)],
            colorscale="RdBu",
            zmid=0,
            row=1,
            col=col,
            showscale=col == 2,
        )
    fig.update_layout(title="Post-hoc CBM head weights (standardised concept margins)")
    fig.update_xaxes(title_text="concept")
    fig.update_yaxes(title_text="class", col=1)
    return fig

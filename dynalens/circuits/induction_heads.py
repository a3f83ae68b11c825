"""Reproduction: induction heads form in a phase change (Olsson et al. 2022), over checkpoints.

``dynalens reproduce induction-heads`` / :func:`reproduce_induction_heads` trains a
2-layer attention-only :class:`~dynalens.circuits.reference.ReferenceTransformer`
(d_model 64, 4 heads, LayerNorm) with AdamW on the induction task with a random gap
(:mod:`dynalens.circuits.induction`: T = 40, k = 8, gap 0-12, loss only inside the second
copy), recording checkpoints with ``Recorder(checkpoints=LogSpaced(...) ∪ every n)``.
Then, with :func:`~dynalens.circuits.over_training.over_training` on one held-out batch,
at every checkpoint:

- loss and accuracy inside the second copy;
- per-head induction score and previous-token score (attention weights);
- the patching effect of each head: its output (``hook_z``, all positions) resampled
  from the corrupted sequences (first copy replaced by fresh tokens) into the clean run
  (noising), as the change of the mean log-probability of the second copy's next tokens
  (nats; negative: the head is needed).

The claim (Olsson et al. 2022, §5 / Fig. 2 for small attention-only models): the loss
drops abruptly at the step where layer-1 heads start attending to the token after the
earlier occurrence (induction) and layer-0 heads to the previous token, and only then do
the heads' patching effects become large. The phase-change step reported is the first
checkpoint where the largest layer-1 induction score passes halfway from its first to
its last value.

Writes to ``out`` (default ``out/induction_heads``): ``store.zarr`` (checkpoints, the
training loss / accuracy scalars, the layer-1 attention pattern of 4 rows at checkpoint
steps, and the cached over-training tables), ``induction_heads.html/.png`` and
``results.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynalens._provenance import machine
from dynalens.circuits.induction import (
    InductionBatch,
    copy_accuracy,
    copy_loss,
    copy_metric,
    induction_batch,
)
from dynalens.circuits.reference import ReferenceConfig, ReferenceTransformer

CLAIM = (
    "the loss inside the repeated copy drops abruptly when layer-1 heads start attending "
    "to the token after the earlier occurrence (induction heads) and layer-0 heads to the "
    "previous token; the heads' patching effects appear at the same step (Olsson et al. "
    "2022, phase change)"
)


@dataclass(frozen=True)
class InductionConfig:
    """Task, model, training and analysis sizes (full and quick presets below)."""

    seq_len: int = 40
    k: int = 8
    max_gap: int = 12
    d_vocab: int = 64
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    lr: float = 1e-3
    batch: int = 64
    steps: int = 2000
    log_checkpoints: int = 12
    every_checkpoint: int = 50
    eval_batch: int = 256
    patch_batch: int = 64
    seed: int = 0

    def model_config(self) -> ReferenceConfig:
        return ReferenceConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
            d_vocab=self.d_vocab, n_ctx=self.seq_len, d_mlp=None,
        )  # fmt: skip

    def checkpoint_steps(self) -> list[int]:
        """LogSpaced(log_checkpoints, steps) ∪ every ``every_checkpoint`` steps."""
        from dynalens.probe.schedules import LogSpaced

        grid = set(range(0, self.steps + 1, self.every_checkpoint)) | {self.steps}
        return sorted(set(LogSpaced(self.log_checkpoints, self.steps).steps) | grid)

    def batch_of(self, n: int, seed: int) -> InductionBatch:
        return induction_batch(
            n, seq_len=self.seq_len, k=self.k, max_gap=self.max_gap, d_vocab=self.d_vocab,
            seed=seed,
        )  # fmt: skip


FULL = InductionConfig()
QUICK = replace(FULL, lr=3e-3, batch=32, steps=450, log_checkpoints=6, every_checkpoint=50,
                eval_batch=64, patch_batch=32)  # fmt: skip


def train_induction(
    cfg: InductionConfig, store_path: str | os.PathLike[str], *, progress: bool = True
) -> ReferenceTransformer:
    """Train the model of ``cfg``, recording checkpoints, loss and accuracy to a store."""
    from tqdm.auto import tqdm

    from dynalens.probe.recorder import Recorder

    model = ReferenceTransformer(cfg.model_config(), seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = cfg.checkpoint_steps()
    rec = Recorder(
        model, store_path, sites="blocks.1.attn.hook_pattern", every=steps,
        capture=("activations",), rows=4, checkpoints=steps,
        config={"task": "induction", **asdict(cfg)},
    )  # fmt: skip
    model.train()
    try:
        for step in tqdm(range(cfg.steps), desc="induction training", disable=not progress):
            batch = cfg.batch_of(cfg.batch, seed=cfg.seed * 1_000_003 + step)
            logits = model(batch.tokens)
            loss = copy_loss(logits, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step, loss=loss.item(), accuracy=copy_accuracy(logits.detach(), batch))
    finally:
        rec.close()
    return model.eval()


def copy_performance(model: torch.nn.Module, batch: InductionBatch) -> Any:
    """One-row table: ``loss`` (nats) and ``accuracy`` inside the second copy."""
    import pandas as pd

    with torch.no_grad():
        logits = model(batch.tokens)
    return pd.DataFrame({
        "loss": [float(copy_loss(logits, batch))], "accuracy": [copy_accuracy(logits, batch)],
    })  # fmt: skip


def induction_tables(
    store_path: str | os.PathLike[str], cfg: InductionConfig, *, progress: bool = True
) -> dict[str, Any]:
    """The over-training tables of the reproduction (cached in the store): ``performance``,
    ``induction``, ``previous_token`` and ``patching``."""
    from dynalens.circuits.over_training import over_training
    from dynalens.probe.store import open_store

    store = open_store(store_path)
    held_out = cfg.batch_of(cfg.eval_batch, seed=10**9 + cfg.seed)
    patch = cfg.batch_of(cfg.patch_batch, seed=10**9 + 1 + cfg.seed)

    def build() -> ReferenceTransformer:
        return ReferenceTransformer(cfg.model_config(), seed=None)

    def run(analysis: Any, inputs: dict[str, Any], **kw: Any) -> Any:
        return over_training(store, build, analysis, inputs, progress=progress, **kw)

    return {
        "performance": run(copy_performance, {"batch": held_out}),
        "induction": run("induction_scores", {"batch": held_out}),
        "previous_token": run("previous_token_scores", {"batch": held_out}),
        "patching": run(
            "activation_patching", {"clean": patch.tokens, "corrupt": patch.corrupt},
            params={"metric": copy_metric(patch), "components": ["head_out"],
                    "positions": "all", "mode": "noising"},
        ),
    }  # fmt: skip


def summarize(tables: dict[str, Any]) -> dict[str, Any]:
    """Numbers of the claim: scores and effects at the first and last checkpoint, the
    strongest heads, and the phase-change step."""
    perf = tables["performance"]
    ind, prev, patch = tables["induction"], tables["previous_token"], tables["patching"]
    ind1 = ind[ind["layer"] == 1].groupby("step")["score"].max()
    prev0 = prev[prev["layer"] == 0].groupby("step")["score"].max()
    halfway = ind1.iloc[0] + 0.5 * (ind1.iloc[-1] - ind1.iloc[0])
    phase = int(ind1.index[np.argmax(ind1.to_numpy() >= halfway)])
    loss = perf.set_index("step")["loss"]
    loss_half = loss.iloc[0] + 0.5 * (loss.iloc[-1] - loss.iloc[0])
    last = int(perf["step"].max())

    def head(table: Any, layer: int | None, col: str, best: str) -> dict[str, Any]:
        rows = table[table["step"] == last]
        rows = rows if layer is None else rows[rows["layer"] == layer]
        row = rows.loc[rows[col].idxmax() if best == "max" else rows[col].idxmin()]
        return {"head": f"L{int(row['layer'])}H{int(row['head'])}", col: float(row[col])}

    effects = patch.groupby("step")["effect"].min()
    return {
        "phase_change_step": phase,
        "loss_halfway_step": int(loss.index[np.argmax(loss.to_numpy() <= loss_half)]),
        "first_step": int(perf["step"].min()),
        "last_step": last,
        "loss": [float(loss.iloc[0]), float(loss.iloc[-1])],
        "accuracy": [float(perf["accuracy"].iloc[0]), float(perf["accuracy"].iloc[-1])],
        "max_induction_score_layer1": [float(ind1.iloc[0]), float(ind1.iloc[-1])],
        "max_previous_token_score_layer0": [float(prev0.iloc[0]), float(prev0.iloc[-1])],
        "largest_patching_effect": [float(effects.iloc[0]), float(effects.iloc[-1])],
        "top_induction_head": head(ind, 1, "score", "max"),
        "top_previous_token_head": head(prev, 0, "score", "max"),
        "most_needed_head": head(patch, None, "effect", "min"),
    }  # fmt: skip


def reproduce_induction_heads(
    out: str | os.PathLike[str] | None = None, *, quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train, sweep the checkpoints, draw the figure; returns what ``results.json`` holds.

    Args:
        out: output folder (default ``out/induction_heads``); its old store is replaced.
        quick: the small preset (450 steps of batch 32 at lr 3e-3; ~14 CPU s) for tests
            and notebooks; the full one (2 000 steps at lr 1e-3) about a CPU minute.
        progress: show progress bars.
    """
    from dynalens.circuits.figures import plot_induction_heads
    from dynalens.figures import save_figure
    from dynalens.probe.store_writer import is_store_root

    cfg = QUICK if quick else FULL
    folder = Path(out if out is not None else Path("out") / "induction_heads")
    store_path = folder / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    folder.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster and deterministic
    try:
        wall, cpu = time.time(), time.process_time()
        train_induction(cfg, store_path, progress=progress)
        train_wall, train_cpu = time.time() - wall, time.process_time() - cpu
        tables = induction_tables(store_path, cfg, progress=progress)
        sweep_wall = time.time() - wall - train_wall
    finally:
        torch.set_num_threads(threads)
    summary = summarize(tables)
    fig = plot_induction_heads(tables, phase_change_step=summary["phase_change_step"])
    files = [str(f) for f in save_figure(fig, folder / "induction_heads")]
    results: dict[str, Any] = {
        "name": "induction-heads",
        "title": "Olsson et al. 2022: induction heads form in a phase change",
        "claim": CLAIM,
        "task": (
            f"induction with a random gap: T={cfg.seq_len}, k={cfg.k}, gap 0-{cfg.max_gap}, "
            f"vocabulary {cfg.d_vocab}; loss only inside the second copy"
        ),
        "model": (
            f"{cfg.n_layers}-layer attention-only ReferenceTransformer, d_model {cfg.d_model}, "
            f"{cfg.n_heads} heads, LayerNorm; AdamW lr {cfg.lr}, batch {cfg.batch}"
        ),
        "quick": quick,
        "config": asdict(cfg),
        "checkpoints": cfg.checkpoint_steps(),
        "summary": summary,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "sweep_wall_s": sweep_wall,
        "tables": {k: _records(v) for k, v in tables.items()},
        "machine": machine(),
        "store": str(store_path),
    }  # fmt: skip
    results["files"] = [*files, str(folder / "results.json")]
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _records(df: Any) -> list[dict[str, Any]]:
    """Rows as JSON-able dicts (NaN and missing as None)."""
    clean = df.astype(object).where(df.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in clean.to_dict(orient="records")
    ]

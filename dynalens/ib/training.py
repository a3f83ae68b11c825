"""Training the information-plane networks with a Recorder attached.

One loop serves the demo, the reproductions and the notebooks: train on a fixed split of
the 12-bit task, record every hidden layer on the full input set (the probe set) at
log-spaced epochs, log to the scalar table once per epoch (at its last step): ``epoch``,
the epoch's mean training-batch ``loss`` and ``train_accuracy``, and at recorded epochs
``test_accuracy`` (one scalar row per epoch, not per step: the table stays small and the
loop does not pay a scalar write per step).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from dynalens._threads import limit_threads
from dynalens._validation import check_float, check_int, check_option
from dynalens.ib.networks import LAYERS, hidden_sites, tishby_network
from dynalens.probe.recorder import Recorder
from dynalens.probe.schedules import AtSteps, LogSpaced
from dynalens.probe.store import Store

#: torch has fused CPU kernels for Adam and SGD from 2.4 on
FUSED_CPU_OPTIMIZERS = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)


@dataclass
class IBConfig:
    """How to train one information-plane network.

    Attributes:
        activation: ``tanh`` | ``relu`` | ``noisytanh``.
        epochs: training epochs.
        records: about this many log-spaced epochs are recorded (always the first and
            the last).
        optimizer: ``adam`` or ``sgd`` (with momentum 0.9).
        lr: learning rate.
        batch_size: mini-batch size.
        weight_decay: L2 penalty coefficient (Chelombiev et al. study its effect).
        noise_std: noise of ``noisytanh`` units (Goldfeld et al.).
        train_fraction: share of the 4096 patterns trained on (the rest is the test set);
            every layer is measured on all patterns.
        layers: widths, input first.
        seed: seed of initialisation, split and batches.
    """

    activation: str = "tanh"
    epochs: int = 1000
    records: int = 40
    optimizer: str = "adam"
    lr: float = 3e-3
    batch_size: int = 256
    weight_decay: float = 0.0
    noise_std: float = 0.0
    train_fraction: float = 0.8
    layers: tuple[int, ...] = field(default=LAYERS)
    seed: int = 0

    def validate(self) -> IBConfig:
        check_option("activation", self.activation, ("tanh", "relu", "noisytanh"))
        check_int("epochs", self.epochs, min=1)
        check_int("records", self.records, min=2)
        check_option("optimizer", self.optimizer, ("adam", "sgd"))
        check_float("lr", self.lr, min=0.0, min_inclusive=False)
        check_int("batch_size", self.batch_size, min=1)
        check_float("weight_decay", self.weight_decay, min=0.0)
        check_float("noise_std", self.noise_std, min=0.0)
        check_float("train_fraction", self.train_fraction, min=0.0, max=1.0, min_inclusive=False)
        return self


def train_ib_network(
    x: np.ndarray,
    y: np.ndarray,
    config: IBConfig,
    store_path: str | os.PathLike[str],
    *,
    run: str | None = None,
    progress: bool = True,
) -> Store:
    """Train ``tishby_network`` on (x, y) per ``config``, recording every hidden layer on
    all of x at log-spaced epochs; returns the run's store."""
    from tqdm.auto import tqdm

    config.validate()
    gen = torch.Generator().manual_seed(config.seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    n = len(xt)
    perm = torch.randperm(n, generator=gen)
    n_train = max(1, round(config.train_fraction * n))
    train_idx, test_idx = perm[:n_train], perm[n_train:]
    model = tishby_network(
        config.activation, layers=config.layers, noise_std=config.noise_std, seed=config.seed
    )
    opt: torch.optim.Optimizer
    # the fused CPU kernels (torch >= 2.4) do the same update in one call per step instead
    # of a dozen small ops per parameter: 3.2 -> 1.9 ms per step of this network (measured)
    fused = True if FUSED_CPU_OPTIMIZERS else None
    if config.optimizer == "adam":
        opt = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay,
            fused=fused,
        )  # fmt: skip
    batch = min(config.batch_size, n_train)
    spe = max(1, n_train // batch)
    epochs = LogSpaced(num=config.records, stop=config.epochs).steps
    meta: dict[str, Any] = {**asdict(config), "steps_per_epoch": spe, "recorded_epochs": epochs}
    meta["layers"] = list(config.layers)
    with (
        limit_threads(1),
        Recorder(  # a tiny network: see dynalens._threads
            model,
            store_path,
            sites=hidden_sites(model),
            every=AtSteps(e * spe for e in epochs),
            capture=(),
            probe=(xt, yt),
            probe_batch_size=n,
            run=run,
            config=meta,
        ) as rec,
    ):
        step = 0
        bar = tqdm(range(config.epochs), desc=f"training {config.activation}", disable=not progress)
        for epoch in bar:
            order = train_idx[torch.randperm(n_train, generator=gen)]
            loss_sum = torch.zeros(())
            correct = torch.zeros((), dtype=torch.long)
            for b in range(spe):
                idx = order[b * batch : (b + 1) * batch]
                logits = model(xt[idx])
                loss = nn.functional.cross_entropy(logits, yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == yt[idx]).sum()
                rec.step(step)
                step += 1
            scalars = {"epoch": epoch + 1, "loss": float(loss_sum) / spe,
                       "train_accuracy": float(correct) / (spe * batch)}  # fmt: skip
            if epoch + 1 in epochs or epoch == config.epochs - 1:
                scalars["test_accuracy"] = _accuracy(model, xt, yt, test_idx)
            rec.log(step - 1, **scalars)
    return rec.store()


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> float:
    if len(idx) == 0:
        return float("nan")
    was = model.training
    model.eval()
    acc = (model(x[idx]).argmax(1) == y[idx]).float().mean().item()
    model.train(was)
    return acc

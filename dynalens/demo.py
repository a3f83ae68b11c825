"""The main job (``dynalens demo``, ``make demo``) on the embedded default task.

Trains the Shwartz-Ziv & Tishby network (12-10-7-5-4-3-2, tanh) on the built-in 12-bit
task with a :class:`~dynalens.Recorder` attached to a plain training loop: every layer's
activations on the full 4096-pattern probe set at log-spaced epochs, plus live-batch
activations and gradients, loss and accuracy in the scalar table. Then prints what the
store holds (``dynalens info``).
"""

from __future__ import annotations

import itertools
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from dynalens.datasets import twelve_bit_task
from dynalens.probe.recorder import Recorder
from dynalens.probe.schedules import LogSpaced
from dynalens.probe.store_writer import is_store_root

LAYERS = (12, 10, 7, 5, 4, 3, 2)


def tishby_network(activation: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Sequential:
    """The 12-10-7-5-4-3-2 network: ``fc1``, ``tanh1``, ..., ``fc5``, ``tanh5``, ``fc6``
    (the activation modules are named after ``activation``, e.g. ``relu1``)."""
    torch.manual_seed(seed)
    act = activation.__name__.lower()
    mods: dict[str, nn.Module] = {}
    for i, (a, b) in enumerate(itertools.pairwise(LAYERS), start=1):
        mods[f"fc{i}"] = nn.Linear(a, b)
        if i < len(LAYERS) - 1:
            mods[f"{act}{i}"] = activation()
    return nn.Sequential(OrderedDict(mods))


def run_demo(out: str | Path = "out/demo", epochs: int | None = None) -> Path:
    """Train, record, print the store summary; returns the store path."""
    from tqdm.auto import tqdm

    from dynalens.cli import format_info

    epochs = 400 if epochs is None else epochs
    out = Path(out)
    store_path = out / "store.zarr"
    if store_path.exists() and is_store_root(store_path):
        shutil.rmtree(store_path)
    out.mkdir(parents=True, exist_ok=True)
    x_np, y_np = twelve_bit_task()
    x = torch.from_numpy(x_np).float()
    y = torch.from_numpy(y_np).long()
    gen = torch.Generator().manual_seed(0)
    model = tishby_network()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    batch = 256
    steps_per_epoch = len(x) // batch
    with Recorder(
        model,
        store_path,
        sites=nn.Tanh,
        every=LogSpaced(num=40, stop=epochs * steps_per_epoch),
        capture=("activations", "gradients"),
        probe=(x, y),
        rows=64,
        config={"task": "twelve_bit", "layers": list(LAYERS), "lr": 0.3, "batch": batch},
    ) as rec:
        step = 0
        for _ in tqdm(range(epochs), desc="training", unit="epoch"):
            perm = torch.randperm(len(x), generator=gen)
            for b in range(steps_per_epoch):
                idx = perm[b * batch : (b + 1) * batch]
                logits = model(x[idx])
                loss = nn.functional.cross_entropy(logits, y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                acc = (logits.argmax(1) == y[idx]).float().mean()
                rec.step(step, sample_ids=idx, loss=loss.item(), accuracy=acc.item())
                step += 1
    store = rec.store()
    print(format_info(store.info()))
    print(f"\nstore written to {store_path}")
    return store_path

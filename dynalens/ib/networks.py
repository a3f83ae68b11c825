"""The networks of the information-plane papers.

* Shwartz-Ziv & Tishby (2017): 12-10-7-5-4-3-2, tanh hidden units, softmax output.
* Saxe et al. (2018): the same network with ReLU hidden units.
* Goldfeld et al. (2019): tanh units with additive Gaussian noise,
  ``T = tanh(W t + b) + Z``, ``Z ~ N(0, beta^2 I)``, which makes I(X;T) finite and
  well-defined for a network with continuous units.

Module names mirror the papers' layers: ``fc1, tanh1, ..., fc5, tanh5, fc6`` (the
activation modules are named after their class: ``relu1``, ``noisytanh1``, ...).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dynalens._validation import check_float

LAYERS = (12, 10, 7, 5, 4, 3, 2)


class NoisyTanh(nn.Module):
    """``tanh(x) + N(0, noise_std^2)`` in training mode; ``tanh(x)`` in eval mode.

    The probe passes of a :class:`~dynalens.Recorder` run in eval mode, so they record
    the clean activations ``c(x)``; the ``noisy`` MI estimator then adds the known noise
    analytically (Goldfeld et al. 2019)."""

    def __init__(self, noise_std: float) -> None:
        super().__init__()
        self.noise_std = check_float("noise_std", noise_std, min=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        if self.training and self.noise_std > 0:
            y = y + self.noise_std * torch.randn_like(y)
        return y

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}"


def tishby_network(
    activation: str = "tanh",
    *,
    layers: Sequence[int] = LAYERS,
    noise_std: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """The information-plane network.

    Args:
        activation: ``"tanh"`` (Shwartz-Ziv & Tishby), ``"relu"`` (Saxe et al.) or
            ``"noisytanh"`` (Goldfeld et al.; needs ``noise_std``).
        layers: widths, input first (default 12-10-7-5-4-3-2).
        noise_std: the noise standard deviation beta of ``noisytanh`` units.
        seed: initialisation seed.
    """
    from dynalens._validation import check_option

    activation = check_option("activation", activation, ("tanh", "relu", "noisytanh"))
    torch.manual_seed(seed)
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    widths = list(layers)
    for i, (a, b) in enumerate(itertools.pairwise(widths), start=1):
        mods[f"fc{i}"] = nn.Linear(a, b)
        if i < len(widths) - 1:
            if activation == "tanh":
                mods[f"tanh{i}"] = nn.Tanh()
            elif activation == "relu":
                mods[f"relu{i}"] = nn.ReLU()
            else:
                mods[f"noisytanh{i}"] = NoisyTanh(noise_std)
    return nn.Sequential(mods)


def hidden_sites(model: nn.Sequential) -> list[str]:
    """Names of the hidden activation modules, input side first."""
    return [name for name, m in model.named_children() if not isinstance(m, nn.Linear)]

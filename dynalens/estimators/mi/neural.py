r"""Neural variational lower bounds on mutual information: InfoNCE and MINE.

Both train a small critic network on a training split and report the bound on a held-out
split, in nats. They are included for comparison with the literature; they are *not*
reliable metrics (Poole et al. 2019; Song & Ermon 2020), and their numbers depend on the
critic, the training budget and the seed (all recorded in ``params``).

* **InfoNCE** (van den Oord et al. 2018, "Representation learning with contrastive
  predictive coding"; Poole et al. 2019, "On variational bounds of mutual information"):

  .. math:: I \ge \mathbb{E}\Big[\frac1B\sum_i f(x_i,y_i)
            - \log\frac1B\sum_j e^{f(x_i,y_j)}\Big].

  Bias: a lower bound in expectation that can never exceed :math:`\log B` (B = batch
  size), so it *underestimates* any MI above a fraction of :math:`\log B`; low variance.
  The cap is reported in ``details["log_batch"]``.
* **MINE** (Belghazi et al. 2018, "Mutual information neural estimation"): the
  Donsker-Varadhan bound :math:`I \ge \mathbb{E}_P[T] - \log\mathbb{E}_{P_XP_Y}[e^T]`,
  trained with the moving-average gradient correction of the paper. Bias: the plug-in
  :math:`-\log` of a sample mean is biased *upward* (Jensen), so on finite samples the
  estimate can exceed the true MI; high variance that grows like :math:`e^{I}` (Song &
  Ermon 2020, "Understanding the limitations of variational MI estimators").

Valid when: continuous (or numerically coded) variables with enough samples to train a
critic (n >= 64). Inputs are standardised per column. The standard error is the spread of
the per-batch held-out bounds.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dynalens._validation import check_float, check_int, check_option
from dynalens.errors import EstimatorRegimeError
from dynalens.estimators.mi._base import MIEstimator, MIResult, Variable, standardize

__all__ = ["MINE", "InfoNCE"]


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, d_out),
    )


class _NeuralBound(MIEstimator):
    symmetric = False  # symmetric in theory, but training noise breaks exact symmetry

    def __init__(
        self,
        hidden: int = 64,
        n_steps: int = 400,
        batch_size: int = 128,
        lr: float = 1e-3,
        test_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.hidden = hidden
        self.n_steps = n_steps
        self.batch_size = batch_size
        self.lr = lr
        self.test_fraction = test_fraction
        self.seed = seed

    def _check_params(self) -> dict[str, Any]:
        return {
            "hidden": check_int("hidden", self.hidden, min=1),
            "n_steps": check_int("n_steps", self.n_steps, min=1),
            "batch_size": check_int("batch_size", self.batch_size, min=2),
            "lr": check_float("lr", self.lr, min=0.0, min_inclusive=False),
            "test_fraction": check_float("test_fraction", self.test_fraction, min=0.05, max=0.9),
            "seed": check_int("seed", self.seed),
        }

    def _critic(self, dx: int, dy: int, hidden: int) -> nn.Module:
        raise NotImplementedError

    def _scores(self, critic: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, B) matrix of critic values f(x_i, y_j)."""
        raise NotImplementedError

    def _bound(self, s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, s: torch.Tensor) -> torch.Tensor:
        return -self._bound(s)

    def _estimate(self, vx: Variable, vy: Variable, params: dict[str, Any]) -> MIResult:
        n = vx.n
        b = params["batch_size"]
        n_test = round(n * params["test_fraction"])
        if n < 64 or n_test < b or n - n_test < b:
            raise EstimatorRegimeError(
                f"{self.name} needs enough samples for a training and a held-out batch: "
                f"n={n}, batch_size={b}, test_fraction={params['test_fraction']}; pass "
                f"at least {math.ceil(b / min(params['test_fraction'], 0.5)) + b} "
                "samples or a smaller batch_size."
            )
        x = standardize(vx.data.to(torch.float32))
        y = standardize(vy.data.to(torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params["seed"])
            perm = torch.randperm(n)
            test, train = perm[:n_test], perm[n_test:]
            critic = self._critic(x.shape[1], y.shape[1], params["hidden"]).to(x.device)
            opt = torch.optim.Adam(critic.parameters(), lr=params["lr"])
            self._reset_state()
            for _ in range(params["n_steps"]):
                idx = train[torch.randint(len(train), (b,))]
                loss = self._loss(self._scores(critic, x[idx], y[idx]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                batches = test[: (len(test) // b) * b].reshape(-1, b)
                vals = torch.stack(
                    [self._bound(self._scores(critic, x[i], y[i])) for i in batches]
                ).double()
        est = float(vals.mean())
        se = float(vals.std() / math.sqrt(len(vals))) if len(vals) > 1 else None
        return self._result(
            est,
            n,
            params,
            stderr=se,
            details={"log_batch": math.log(b), "n_test_batches": len(vals)},
        )

    def _reset_state(self) -> None:
        pass


class InfoNCE(_NeuralBound):
    """InfoNCE lower bound with a separable critic f(x, y) = g(x)·h(y) (nats, <= log B).

    Example:
        >>> est = InfoNCE(n_steps=200)  # doctest: +SKIP
        >>> est.estimate(x, y).estimate  # doctest: +SKIP
    """

    name = "infonce"

    def __init__(
        self,
        hidden: int = 64,
        n_steps: int = 400,
        batch_size: int = 128,
        lr: float = 1e-3,
        test_fraction: float = 0.3,
        seed: int = 0,
        critic: str = "separable",
        embed_dim: int = 32,
    ) -> None:
        super().__init__(hidden, n_steps, batch_size, lr, test_fraction, seed)
        self.critic = critic
        self.embed_dim = embed_dim

    def _check_params(self) -> dict[str, Any]:
        p = super()._check_params()
        p["critic"] = check_option("critic", self.critic, ("separable", "concat"))
        p["embed_dim"] = check_int("embed_dim", self.embed_dim, min=1)
        self._kind, self._embed = p["critic"], p["embed_dim"]
        return p

    def _critic(self, dx: int, dy: int, hidden: int) -> nn.Module:
        if self._kind == "separable":
            return nn.ModuleList([_mlp(dx, hidden, self._embed), _mlp(dy, hidden, self._embed)])
        return _mlp(dx + dy, hidden, 1)

    def _scores(self, critic: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if isinstance(critic, nn.ModuleList):
            return critic[0](x) @ critic[1](y).T
        bsz = x.shape[0]
        pairs = torch.cat(
            [x[:, None, :].expand(bsz, bsz, -1), y[None, :, :].expand(bsz, bsz, -1)], dim=-1
        )
        return critic(pairs).squeeze(-1)

    def _bound(self, s: torch.Tensor) -> torch.Tensor:
        return (s.diagonal() - torch.logsumexp(s, dim=1)).mean() + math.log(s.shape[0])


class MINE(_NeuralBound):
    """MINE: Donsker-Varadhan bound with a concatenation critic and the paper's
    moving-average gradient correction (nats; may overshoot the truth on finite data).
    """

    name = "mine"

    def __init__(
        self,
        hidden: int = 64,
        n_steps: int = 400,
        batch_size: int = 128,
        lr: float = 1e-3,
        test_fraction: float = 0.3,
        seed: int = 0,
        ema_rate: float = 0.01,
    ) -> None:
        super().__init__(hidden, n_steps, batch_size, lr, test_fraction, seed)
        self.ema_rate = ema_rate

    def _check_params(self) -> dict[str, Any]:
        p = super()._check_params()
        p["ema_rate"] = check_float(
            "ema_rate", self.ema_rate, min=0.0, max=1.0, min_inclusive=False
        )
        self._rate = p["ema_rate"]
        return p

    def _reset_state(self) -> None:
        self._ema: torch.Tensor | None = None

    def _critic(self, dx: int, dy: int, hidden: int) -> nn.Module:
        return _mlp(dx + dy, hidden, 1)

    def _scores(self, critic: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        bsz = x.shape[0]
        pairs = torch.cat(
            [x[:, None, :].expand(bsz, bsz, -1), y[None, :, :].expand(bsz, bsz, -1)], dim=-1
        )
        return critic(pairs).squeeze(-1)

    def _bound(self, s: torch.Tensor) -> torch.Tensor:
        bsz = s.shape[0]
        off = ~torch.eye(bsz, dtype=torch.bool, device=s.device)
        marg = s[off]  # all pairs (x_i, y_j), i != j: samples of the product of marginals
        return s.diagonal().mean() - (torch.logsumexp(marg, 0) - math.log(marg.numel()))

    def _loss(self, s: torch.Tensor) -> torch.Tensor:
        # Belghazi et al. sec. 3.2: divide the gradient of log E_Q[e^T] by a moving
        # average of E_Q[e^T] instead of the (biased) batch mean.
        bsz = s.shape[0]
        off = ~torch.eye(bsz, dtype=torch.bool, device=s.device)
        marg = s[off]
        mean_exp = torch.exp(torch.logsumexp(marg, 0) - math.log(marg.numel()))
        if self._ema is None:
            self._ema = mean_exp.detach()
        else:
            self._ema = (1 - self._rate) * self._ema + self._rate * mean_exp.detach()
        return -(s.diagonal().mean() - mean_exp / self._ema)

r"""The cem reference's probes (mateoespinosa/cem, Espinosa Zarlenga et al. 2023), for
``compat="cem"`` of the Oracle and Niche Impurity Scores (guide §2, §3.3, §3.4).

- OIS (``metrics/oracle.py: concept_purity_matrix``): for every (feature i, concept j) a
  1-32-1 ReLU MLP with a sigmoid output, binary cross-entropy, Adam (lr 1e-3), 25 epochs,
  batch ``min(512, n_train)`` (so 25 full-batch steps when n_train <= 512); its held-out
  ROC-AUC is the purity entry. All pairs train at once as a batch of independent networks
  (Adam is elementwise and each network's loss is its own mean, so this is the same as
  training them one by one). cem draws Keras' Glorot initialisation and shuffles without a
  seed; here the weights are He / LeCun normal draws, ``W1 ~ N(0, 2)`` (fan-in 1) and
  ``W2 ~ N(0, 1/32)``, biases 0, from ``torch.Generator().manual_seed(seed)``, which then
  also draws each epoch's shuffle (shared by all pairs), so a run is reproducible.
- NIS (``metrics/niching.py``): scikit-learn ``MLPClassifier((20, 20), random_state=1,
  max_iter=1000)`` from all soft features to all concepts (multi-label), used as fitted even
  when it stops unconverged (as cem does).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dynalens.estimators.concepts._scores import auc_columns

__all__ = ["cem_niche_probabilities", "cem_pair_scores", "cem_purity"]

HIDDEN = 32
EPOCHS = 25
LR = 1e-3
BATCH = 512


def cem_pair_scores(
    x: torch.Tensor,
    c: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    seed: int,
    *,
    epochs: int = EPOCHS,
) -> torch.Tensor:
    """Test-row logits (n_test, k_x * k) of cem's 1-32-1 MLP probe from feature i of ``x``
    (n, k_x) to concept j of ``c`` (n, k), column ``i * k + j``, trained on ``train``."""
    k_x, k = x.shape[1], c.shape[1]
    b = k_x * k
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(b, 1, HIDDEN, generator=g) * 2**0.5).requires_grad_()
    b1 = torch.zeros(b, 1, HIDDEN, requires_grad=True)
    w2 = (torch.randn(b, HIDDEN, 1, generator=g) / HIDDEN**0.5).requires_grad_()
    b2 = torch.zeros(b, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=LR)
    xf = x.float().T.repeat_interleave(k, 0)[:, :, None]  # (b, n, 1): feature i
    yf = c.float().T.repeat(k_x, 1)[:, :, None]  # (b, n, 1): concept j

    def forward(rows: torch.Tensor) -> torch.Tensor:
        return torch.relu(xf[:, rows] @ w1 + b1) @ w2 + b2

    batch = min(BATCH, len(train))
    for _ in range(epochs):
        perm = train[torch.randperm(len(train), generator=g)]
        for lo in range(0, len(perm), batch):
            rows = perm[lo : lo + batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(rows), yf[:, rows])
            opt.zero_grad()
            (loss * b).backward()  # the sum of the b networks' own mean losses
            opt.step()
    with torch.no_grad():
        return forward(test)[:, :, 0].T.double()


def cem_purity(
    scores: torch.Tensor, c_test: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Purity matrix (k_x, k) from :func:`cem_pair_scores`' test logits: AUC of column
    ``i * k + j`` for concept j (optionally on resampled ``rows``)."""
    if rows is not None:
        scores, c_test = scores[rows], c_test[rows]
    k = c_test.shape[1]
    labels = c_test.repeat(1, scores.shape[1] // k)
    return auc_columns(labels, scores).reshape(-1, k)


def cem_niche_probabilities(
    x_train: torch.Tensor,
    c_train: torch.Tensor,
    x_test: torch.Tensor,
    which: torch.Tensor,
    keep: torch.Tensor,
) -> torch.Tensor:
    """Fit cem's NIS probe and return, for each masked variant u, the test probability of
    concept ``which[u]`` with the features where ``keep[u]`` is 0 set to 0: (n_test, U)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    probe = MLPClassifier((20, 20), random_state=1, max_iter=1000)
    y = c_train.numpy().astype(np.int64)
    with warnings.catch_warnings():  # as in cem, an unconverged probe is used as it is
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_train.numpy(), y if y.shape[1] > 1 else y[:, 0])
    xt = x_test.numpy()
    keep_np = keep.numpy()
    out = np.empty((xt.shape[0], len(which)))
    cache: dict[bytes, np.ndarray] = {}  # one prediction per distinct mask
    for u, (j, mask) in enumerate(zip(which.tolist(), keep_np, strict=True)):
        key = mask.tobytes()
        if key not in cache:
            proba = probe.predict_proba(xt * mask)
            cache[key] = proba if c_train.shape[1] > 1 else proba[:, 1:]
        out[:, u] = cache[key][:, j]
    return torch.from_numpy(out)

"""The 12-bit task of the information-plane papers.

Shwartz-Ziv & Tishby (2017, "Opening the black box of deep neural networks via
information", Sec. 3.1) train on all 4096 patterns of 12 binary inputs, with labels from
a spherically symmetric function of the inputs and nearly balanced classes. The paper's
own labels ship as ``var_u.mat`` in its repository (ravidziv/IDNNs); dynalens does not
ship that file: :func:`load_var_u` reads it from a path you give, and
:func:`twelve_bit_task` generates a comparable task itself.

The generated labels: each bit ``k`` sits on a vertex ``u_k`` of the regular icosahedron
(12 points spread uniformly on the 2-sphere); a pattern's spins ``s = 2x - 1`` give the
dipole ``m(x) = sum_k s_k u_k``; ``y = 1[|m(x)|^2 > theta]`` with ``theta`` the split
closest to balanced classes. ``|m|^2 = s^T G s`` with ``G_kl = u_k . u_l`` depends on the
pattern only through inner products of the points, so it is invariant under every
rotation of the sphere that permutes the points -- spherically symmetric as in the paper.
"""

from __future__ import annotations

import os

import numpy as np

from dynalens.errors import InvalidInputError


def all_patterns(bits: int = 12) -> np.ndarray:
    """Every ``bits``-bit pattern once, lexicographic (row i = binary expansion of i,
    most significant bit first), as uint8 -- the row order of ``var_u.mat``."""
    idx = np.arange(2**bits, dtype=np.int64)[:, None]
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)[None, :]
    return ((idx >> shifts) & 1).astype(np.uint8)


def icosahedron_vertices() -> np.ndarray:
    """The 12 unit vertices of the regular icosahedron, shape (12, 3)."""
    phi = (1.0 + 5.0**0.5) / 2.0
    v = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            v += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    arr = np.array(v)
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)


def twelve_bit_task() -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: X (4096, 12) uint8 patterns, y (4096,) uint8 labels (see module doc)."""
    x = all_patterns(12)
    u = icosahedron_vertices()
    s = 2.0 * x - 1.0
    dipole = np.einsum("nk,kd->nd", s, u)
    f = np.round(np.einsum("nd,nd->n", dipole, dipole), 9)
    levels = np.unique(f)
    # the threshold between two levels whose class split is closest to 50/50
    fractions = np.array([(f > t).mean() for t in levels])
    theta = levels[int(np.argmin(np.abs(fractions - 0.5)))]
    return x, (f > theta).astype(np.uint8)


def load_var_u(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """The paper's ``var_u.mat``: ``(X (4096, 12) uint8, y (4096,) uint8)``."""
    from dynalens._optional import require

    sio = require("scipy.io", "load_var_u")
    try:
        mat = sio.loadmat(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"could not read {os.fspath(path)!r} as a MATLAB file: {exc}. Pass the path of "
            "var_u.mat from ravidziv/IDNNs (data/var_u.mat)."
        ) from exc
    if "F" not in mat or "y" not in mat:
        raise InvalidInputError(
            f"{os.fspath(path)!r} has no 'F' and 'y' entries (found {sorted(mat)}); "
            "it is not the IDNNs var_u.mat."
        )
    return np.asarray(mat["F"], dtype=np.uint8), np.asarray(mat["y"], dtype=np.uint8).reshape(-1)

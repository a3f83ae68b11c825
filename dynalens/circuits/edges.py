"""Edge attribution patching (EAP) and EAP-IG (Hanna, Pezzelle & Belinkov 2024).

The residual stream makes every component's input the sum of upstream writes, so an
edge ``u -> v`` is ``u``'s write ``w_u`` as read by ``v``'s input ``in_v``. With base input
``x_b`` (patched run) and source ``x_s`` (denoising: base corrupt, source clean):

    Â(u -> v) = Σ_{b,p,d} (w_u(x_s) - w_u(x_b)) · (1/m) Σ_k ∂m/∂in_v |_{e_k},
    e_k = e_b + (k/m)(e_s - e_b),  k = 0..m-1   (m = 1: plain EAP at the base)

Senders: the token embedding (``input``), every head (``a{l}.h{i}``, write ``z_i W_O^i``)
and every MLP (``m{l}``). Receivers: each head's query, key and value input
(``a{l}.h{i}<q>``; key/value heads under GQA), each MLP's input (``m{l}``) and the logits.

Nothing here reads weights. Per receiver, ``∂m/∂in_v`` is a local vector-Jacobian product
from the receiver's own output back to the residual site that feeds it (a head's ``q``
with only that head's gradient, back to ``resid_pre``; an MLP's output back to
``resid_mid``), and a head's share ``(∂m/∂in_v) W_O^iᵀ`` is the product from
``attn_out`` back to ``z``: so it runs on every backend with these sites, attention-only
models included. By the chain rule the edges of a sender sum to its node attribution
(:func:`~dynalens.circuits.attribution.attribution_patching` with the same steps), which
the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dynalens._optional import require
from dynalens.circuits._inputs import check_pair, check_pair_mode, check_positive
from dynalens.circuits.attribution import constant_leaf, embedding_site, keeper
from dynalens.circuits.metrics import Metric, check_per_example
from dynalens.errors import InvalidParameterError
from dynalens.probe.interventions import logits_of, record_activations
from dynalens.probe.interventions_sites import (
    Backend,
    CapabilityError,
    EditingHooks,
    detect_backend,
)

if TYPE_CHECKING:
    import pandas as pd

_IG_ROWS = 2048  # rows per forward when integration steps are stacked on the batch axis


@dataclass
class EdgeScores:
    """Per-example edge attributions ``[edges, batch]`` with sender / receiver names."""

    edges: list[tuple[str, str]]
    values: torch.Tensor
    mode: str

    def mean(self) -> torch.Tensor:
        return self.values.mean(1)

    def score(self, sender: str, receiver: str) -> float:
        """The mean attribution of one edge."""
        try:
            return float(self.mean()[self.edges.index((sender, receiver))])
        except ValueError:
            raise InvalidParameterError(
                f"no edge {sender!r} -> {receiver!r}; edges run from earlier to later nodes."
            ) from None

    def table(self) -> pd.DataFrame:
        """One row per edge: sender, receiver, score (mean over examples), mode."""
        pandas = require("pandas", "EdgeScores.table")
        return pandas.DataFrame({
            "sender": [u for u, _ in self.edges],
            "receiver": [v for _, v in self.edges],
            "score": self.mean().numpy(),
            "mode": self.mode,
        })  # fmt: skip


def _layout(backend: Backend) -> tuple[int, int, int, bool]:
    if backend.n_layers is None:
        raise CapabilityError(
            "edge attribution needs a layered model (transformer-lens names, Hugging Face "
            "GPT-2 / Llama or the reference transformer); use attribution_patching(sites=...)."
        )
    try:
        backend.component_site("mlp_out", 0)
        has_mlp = True
    except CapabilityError:
        has_mlp = False
    return backend.n_layers, backend.heads_of("q"), backend.heads_of("k"), has_mlp


def _site(backend: Backend, component: str, layer: int) -> str:
    return backend.component_site(component, layer)


def edge_attribution_patching(
    model: nn.Module,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    metric: Metric,
    *,
    mode: str = "denoising",
    ig_steps: int = 1,
    embed_site: str | None = None,
) -> EdgeScores:
    """Attribution of every edge of the model's graph (see the module docstring)."""
    check_pair_mode(mode)
    check_positive("ig_steps", ig_steps)
    check_pair(model, clean, corrupt)
    backend = detect_backend(model)
    n_layers, n_heads, n_kv, has_mlp = _layout(backend)
    embed = embed_site or embedding_site(backend)
    base, source = (corrupt, clean) if mode == "denoising" else (clean, corrupt)
    layers = range(n_layers)
    z = [_site(backend, "head_out", lay) for lay in layers]
    attn_out = [_site(backend, "attn_out", lay) for lay in layers]
    pre = [_site(backend, "resid_pre", lay) for lay in layers]
    qkv = {c: [_site(backend, c, lay) for lay in layers] for c in "qkv"}
    mlp = [_site(backend, "mlp_out", lay) for lay in layers] if has_mlp else []
    mid = [_site(backend, "resid_mid", lay) for lay in layers] if has_mlp else []
    final = _site(backend, "resid_post", n_layers - 1)
    writes = [embed, *z, *mlp]
    with torch.no_grad():
        at_source = record_activations(model, source, writes, backend=backend)
        at_base = record_activations(model, base, writes, backend=backend)
    deltas = {s: (at_source[s] - at_base[s]).double() for s in writes}
    e_base, e_source = at_base[embed], at_source[embed]
    receivers: dict[str, torch.Tensor] = {}  # receiver -> mean ∂m/∂in_v [B, T, d]
    watched = [*pre, *mid, *qkv["q"], *qkv["k"], *qkv["v"], *mlp, *z, *attn_out, final]
    kept: dict[str, torch.Tensor] = {}
    b = base.shape[0]
    per_forward = max(1, min(ig_steps, _IG_ROWS // b))  # steps stacked on the batch axis
    for first in range(0, ig_steps, per_forward):
        ks = range(first, min(first + per_forward, ig_steps))
        point = torch.cat([e_base + (k / ig_steps) * (e_source - e_base) for k in ks])
        kept = {}
        hooks = EditingHooks()
        with hooks, torch.enable_grad():
            backend.access(embed).attach(hooks, constant_leaf(point))
            for s in dict.fromkeys(watched):
                backend.access(s).attach(hooks, keeper(kept, s))
            logits = logits_of(model(base.repeat(len(ks), *([1] * (base.ndim - 1)))))
            parts = [metric(logits[i * b : (i + 1) * b]) for i in range(len(ks))]
            for part in parts:
                check_per_example(part, b)
            values = torch.cat(parts)
        outs = [*qkv["q"], *qkv["k"], *qkv["v"], *mlp, final]
        grads = dict(
            zip(outs, torch.autograd.grad(values.sum(), [kept[s] for s in outs], retain_graph=True))
        )
        step: dict[str, torch.Tensor] = {"logits": grads[final]}
        for lay in layers:
            for c, n in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
                site = qkv[c][lay]
                for h in range(n):
                    masked = torch.zeros_like(grads[site])
                    masked[:, :, h] = grads[site][:, :, h]
                    step[f"a{lay}.h{h}<{c}>"] = _vjp(kept[site], kept[pre[lay]], masked)
            if has_mlp:
                step[f"m{lay}"] = _vjp(kept[mlp[lay]], kept[mid[lay]], grads[mlp[lay]])
        for name, g in step.items():
            summed = g.detach().double().unflatten(0, (len(ks), b)).sum(0)
            if name not in receivers:
                receivers[name] = torch.zeros_like(summed)
            receivers[name] += summed / ig_steps
    edges, rows = [], []
    for v, g in receivers.items():
        v_layer = n_layers if v == "logits" else int(v[1:].split(".")[0])
        mlp_receiver = v.startswith("m")
        edges.append(("input", v))
        rows.append(_dot(deltas[embed], g))
        for lay in range(v_layer + (1 if mlp_receiver else 0)):
            # attn_out is linear in z: the product at the first stacked step serves all
            cot = torch.zeros_like(kept[attn_out[lay]])
            cot[:b] = g.to(cot.dtype)
            head_grad = _vjp(kept[attn_out[lay]], kept[z[lay]], cot)[:b].double()
            for h in range(n_heads):
                edges.append((f"a{lay}.h{h}", v))
                rows.append(_dot(deltas[z[lay]][:, :, h], head_grad[:, :, h]))
        for lay in range(v_layer if has_mlp else 0):
            edges.append((f"m{lay}", v))
            rows.append(_dot(deltas[mlp[lay]], g))
    label = "eap" if ig_steps == 1 else f"eap-ig (m={ig_steps})"
    return EdgeScores(edges, torch.stack(rows), f"{mode} {label}")


def _vjp(output: torch.Tensor, inp: torch.Tensor, cotangent: torch.Tensor) -> torch.Tensor:
    """``cotangent · ∂output/∂inp`` through the recorded graph."""
    (g,) = torch.autograd.grad(
        output, inp, grad_outputs=cotangent.to(output.dtype), retain_graph=True
    )
    return g


def _dot(delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-example ``Σ delta · grad`` over all non-batch axes: ``[batch]``."""
    return (delta * grad).reshape(delta.shape[0], -1).sum(1)

"""The README's patching heatmap: denoising ``resid_pre`` patching on the trained IOI toy.

Loads the 2-layer attention-only IOI model shipped with the tests
(``tests/circuits/fixtures/ioi_attn_only_2l.pt``), patches the clean residual stream into
the corrupt run at every layer and position (64 prompt pairs, logit difference IO - S),
and writes ``docs/figures/patching_heatmap.png`` (and the HTML beside it in ``--out``)
with :func:`dynalens.circuits.figures.patching_heatmap` and
:func:`dynalens.figures.save_figure` (PNG through kaleido 0.2.1).

Run: ``.venv/bin/python benchmarks/fig_patching_heatmap.py [--out out/circuits]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dynalens.circuits import ReferenceConfig, ReferenceTransformer, activation_patching, logit_diff
from dynalens.circuits.figures import patching_heatmap
from dynalens.circuits.tasks import VOCAB, ioi_pairs
from dynalens.figures import save_figure

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "circuits" / "fixtures" / "ioi_attn_only_2l.pt"
TEMPLATE = "<bos> When N1 and N2 went to the PLACE , S2 gave a OBJ to".split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "out" / "circuits"))
    ap.add_argument("--figure", default=str(ROOT / "docs" / "figures" / "patching_heatmap.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = ReferenceConfig(n_layers=2, d_model=64, n_heads=4, d_mlp=None, d_vocab=len(VOCAB))
    model = ReferenceTransformer(cfg)
    model.load_state_dict(torch.load(FIXTURE, weights_only=True))
    model.eval()
    pairs = ioi_pairs(64, seed=99)
    metric = logit_diff(pairs.answer, pairs.wrong)
    result = activation_patching(
        model, pairs.clean, pairs.corrupt, metric, components=["resid_pre"], mode="denoising"
    )
    fig = patching_heatmap(result, "resid_pre", tokens=TEMPLATE)
    fig.update_layout(
        title="IOI toy (2-layer attention-only): clean resid_pre patched into the corrupt run"
        "<br><sup>recovered share of the logit difference IO - S, 64 prompt pairs</sup>",
        height=320,
        width=900,
    )
    files = save_figure(fig, Path(args.out) / "patching_heatmap")
    png = next(f for f in files if f.suffix == ".png")
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(png, args.figure)
    table = result.table()
    top = table.reindex(table["normalised"].abs().sort_values(ascending=False).index).head(4)
    print(top[["layer", "position", "effect", "normalised"]].to_string(index=False))
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()

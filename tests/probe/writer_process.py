"""A training process for the crash and live-reading tests (run as a subprocess).

Records a site whose activation at step s is the constant s + 1 and whose gradient is
the constant 1, so any torn, zero-filled or stale record is detectable.
usage: python writer_process.py STORE STEPS ROWS COLS [SECONDS_PER_STEP]
"""

import sys
import time

import torch
from torch import nn

import dynalens


class Echo(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


def main() -> None:
    path, steps, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0  # stands in for training compute
    model = nn.Sequential(Echo())
    rec = dynalens.Recorder(model, path, sites="0", every=1, run="crash", max_pending=2)
    for step in range(steps):
        x = torch.full((rows, cols), float(step + 1), requires_grad=True)
        model(x).sum().backward()
        rec.step(step, loss=float(step))
        print(step, flush=True)
        time.sleep(pause)
    rec.close()


if __name__ == "__main__":
    main()

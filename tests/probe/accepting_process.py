"""A training process whose writer lags behind (for the SIGTERM / Ctrl-C tests).

Steps are accepted by ``Recorder.step()`` much faster than the (slowed) writer commits
them, then the process waits for a signal. usage:
python accepting_process.py MODE STORE STEPS, MODE one of
  default  no handler of its own (SIGTERM's default action after dynalens' handler)
  chained  installs its own SIGTERM handler before the Recorder (it must still run)
  plain    no signal expected: returns from main without close()
"""

import atexit
import signal
import sys
import time

import torch
from torch import nn


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def main() -> None:
    mode, path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    # registered before dynalens' own atexit handler, so it runs after it (LIFO)
    atexit.register(lambda: print(f"hooks at exit {hooks_on(model)}", flush=True))
    if mode == "chained":

        def users_handler(signum, frame):
            print(f"user handler ran, hooks {hooks_on(model)}", flush=True)
            sys.exit(3)

        signal.signal(signal.SIGTERM, users_handler)

    import dynalens
    from dynalens.probe.store_writer import StoreWriter

    slow = StoreWriter.write_record

    def lagging(self, *args, **kwargs):
        time.sleep(0.05)  # a slow disk: accepted steps queue up
        slow(self, *args, **kwargs)

    StoreWriter.write_record = lagging
    rec = dynalens.Recorder(model, path, sites="0", every=1, max_pending=10_000)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(step, loss=loss.item())
    print(f"accepted {steps}", flush=True)
    if mode == "plain":
        return
    time.sleep(60)  # killed before this ends


if __name__ == "__main__":
    main()

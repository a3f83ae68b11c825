"""The on-disk layout of a dynalens store (Zarr v3, local directory).

::

    STORE/                         root group; attrs {"dynalens": {"schema": 2}}
      <run>/                       one group per run; attrs {"dynalens_run": {...}}:
                                   sites (module type, axes), schedule, config, model
                                   summary, world size, versions of dynalens/torch/zarr
        probe/X, probe/Y           the fixed probe set, stored once (when given)
        rank<r>/                   one shard per torch.distributed rank (rank0 alone
                                   in a single-process run); attrs:
                                     committed    records readers may read  <- the ONLY
                                                  source of truth for readers
                                     missing      {array: [record, ...]} arrays absent
                                                  from a record (e.g. no backward ran)
                                     scalar_rows  rows of the scalar table readers may read
          step                     int64 (cap,): optimizer step of record i
          sample_ids               int64 (cap, rows): which samples a live batch held
          activations/<site>       (cap, *shape), one chunk per record
          gradients/<site>         d loss / d activations, same layout
          inputs/<site>            the module's first positional input
          param_grads/<site>/<p>   gradients of the site module's own parameters
          probe_activations/<site> activations on the fixed probe set
          checkpoints/<key>        state_dict entry <key> at checkpointed steps (rank 0)
          scalars/step, scalars/<key>    the scalar table (loss, lr, ...), float64; <key>
                                   is the name escaped (train/loss -> train%2Floss),
                                   the name itself in the column's attrs["name"]

Every chunk file ends with the CRC-32C of its bytes (zarr v3 ``crc32c`` codec, see
:mod:`dynalens.probe.chunk_codec`); readers verify it and the file's size, so a damaged
record is an error, never a value.

Commit protocol: a record's chunks are written first (each atomically: temp file +
rename), then ``committed`` is advanced in the rank group's ``zarr.json``, itself
replaced atomically. A reader trusts only ``committed`` -- never an array's shape,
which runs ahead of the data -- so it never sees a torn or zero-filled step, and a
SIGKILL at any point leaves every committed record readable.
"""

from __future__ import annotations

from typing import Any

#: 2: every chunk ends with its CRC-32C (zarr v3 ``crc32c`` codec); 1: no checksums
SCHEMA_VERSION = 2
ROOT_ATTR = "dynalens"
RUN_ATTR = "dynalens_run"

ACTIVATIONS = "activations"
GRADIENTS = "gradients"
INPUTS = "inputs"
PARAM_GRADS = "param_grads"
PROBE_ACTIVATIONS = "probe_activations"
KINDS = (ACTIVATIONS, GRADIENTS, INPUTS, PARAM_GRADS, PROBE_ACTIVATIONS)
SCALARS = "scalars"


#: zarr v3 "default" chunk keys with "." as separator: one flat file per record
#: (``c.17.0.0``) instead of a directory per record
CHUNK_KEY_ENCODING: Any = {"name": "default", "separator": "."}


def chunk_key(coords: tuple[int, ...]) -> str:
    """The file name of the chunk at ``coords`` under :data:`CHUNK_KEY_ENCODING`."""
    return "c." + ".".join(str(c) for c in coords)


def rank_group(rank: int) -> str:
    """Name of the shard group written by ``rank``."""
    return f"rank{rank}"


def array_path(kind: str, site: str, param: str | None = None) -> str:
    """Path of a record array inside a rank group."""
    return f"{kind}/{site}" if param is None else f"{kind}/{site}/{param}"

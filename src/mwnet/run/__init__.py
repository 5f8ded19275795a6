"""The run directory: checkpoints, metrics and per-sample records, and the plots drawn from them.

These are the pieces a training loop needs to make a run resumable and inspectable.
Every file is written atomically, so a run killed at any moment leaves a directory that
can be resumed and plotted. Plotting imports matplotlib only when called.
"""

from mwnet.run.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from mwnet.run.claim import RunDirBusy, RunDirError
from mwnet.run.interrupt import Terminated, interrupt_deferred, sigterm_as_interrupt
from mwnet.run.model_file import MODEL_FILE, ModelFileError
from mwnet.run.plots import plot_run
from mwnet.run.records import (
    append_jsonl,
    read_json,
    read_jsonl,
    read_sample_weights,
    read_weight_function,
    truncate_jsonl,
    write_json,
    write_sample_weights,
    write_weight_function,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "MODEL_FILE",
    "CheckpointError",
    "ModelFileError",
    "RunDirBusy",
    "RunDirError",
    "Terminated",
    "append_jsonl",
    "interrupt_deferred",
    "load_checkpoint",
    "plot_run",
    "read_json",
    "read_jsonl",
    "read_sample_weights",
    "read_weight_function",
    "save_checkpoint",
    "sigterm_as_interrupt",
    "truncate_jsonl",
    "write_json",
    "write_sample_weights",
    "write_weight_function",
]

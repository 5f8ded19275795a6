"""The allocator setting of :func:`mwnet.machine.keep_freed_memory`, observed from outside.

Each case runs in a fresh interpreter (the setting is process-wide and cannot be undone), and
reads what the kernel sees: the process's resident memory after a 20 MB tensor is freed. With
glibc's defaults a block that size is mapped on its own and unmapped when freed, so the
resident memory falls back; with freed memory kept it stays (the block went to the heap, whose
top is no longer trimmed). The difference is the whole tensor, far above the few pages of
noise, so the test cannot pass by accident.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting is glibc's",
)

PROBE = """
import json, os, sys
import torch
from mwnet.machine import allocator_note, keep_freed_memory

def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

kept = keep_freed_memory() if sys.argv[1] == "call" else False
torch.ones(1)  # load what the first tensor loads before measuring
before = resident()
x = torch.ones(5 * 2**20)  # 20 MB, every page touched
del x
print(json.dumps({"kept": kept, "note": allocator_note(), "held": resident() - before}))
"""
MB = 2**20


def probe(call: bool, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop("LD_PRELOAD", None)
    clean.pop("MWNET_KEEP_FREED_MEMORY", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "call" if call else "skip"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_freed_memory_is_kept_for_reuse():
    kept = probe(call=True)
    assert kept["kept"] and kept["note"] == "malloc keeps freed memory"
    assert kept["held"] > 15 * MB
    default = probe(call=False)
    assert not default["kept"] and default["note"] == "malloc at its defaults"
    assert default["held"] < 5 * MB


@pytest.mark.parametrize(
    "env",
    [{"MWNET_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}],
    ids=["opted-out", "user-tunable"],
)
def test_a_users_choice_is_left_alone(env):
    left = probe(call=True, **env)
    assert not left["kept"]
    assert left["held"] < 5 * MB


def test_the_command_keeps_freed_memory(tmp_path):
    """``mwnet bench step`` (through the command's entry point) says how it allocated."""
    out = subprocess.run(
        [sys.executable, "-m", "mwnet", "bench", "step", "--model", "mlp", "--modes", "plain",
         "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-memory", "--json"],
        capture_output=True, text=True, check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
    )  # fmt: skip
    assert json.loads(out.stdout)[0]["allocator"] == "malloc keeps freed memory"

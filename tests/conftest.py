"""Suite-wide settings.

Under CI, hypothesis draws the same examples on every run. Under pytest-xdist (``make
test`` runs two workers on a 2-core machine) each worker computes on one torch thread, and
so do the processes it starts: two workers with a thread per core each would contend for
the cores. Every test gets back the thread count it started with, whatever it set (a run
with ``threads=N`` in its config sets it for the whole process), so no test sees another's.
Nothing a test decodes is cached in the user's ``~/.cache``: each test process (a worker)
has a cache of its own under pytest's temporary directory (the data and training tests
narrow it to one test).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the runs a test starts
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _cache_of_this_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def _same_threads_for_every_test() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)

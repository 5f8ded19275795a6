"""One intra-op thread for these tests: the models are so small that thread hand-offs cost
more than the arithmetic, and on a busy machine they make timings erratic."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

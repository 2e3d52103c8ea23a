"""The CPU-checkable part of ``glai_core.graphs``: which batches run eagerly and which the graph replays.
(The graphs themselves run in tests/gpu, against the eager loop.)"""

from __future__ import annotations

import pytest
import torch

from glai_core.graphs import EpochGraph, batch_starts


@pytest.mark.parametrize(("n", "batch_size"), [(1437, 64), (1408, 64), (128, 64), (60000, 512), (63, 64)])
def test_batch_starts_are_the_eager_loops_in_order(n: int, batch_size: int) -> None:
    first, full, tail = batch_starts(n, batch_size)
    assert [*first, *full, *tail] == list(range(0, n, batch_size))
    assert len(first) <= 1 and len(tail) <= 1
    assert all(start + batch_size <= n for start in (*first, *full))  # the graph only sees full batches
    assert all(start + batch_size > n for start in tail)


def test_graphs_only_where_they_apply() -> None:
    x = torch.zeros(256, 4)
    assert not EpochGraph.usable(x, torch.device("cpu"), True, 64, 256)  # no CUDA
    cuda = torch.device("cuda")
    assert not EpochGraph.usable(x, cuda, True, 64, 256)  # rows not on the device
    assert not EpochGraph.usable(object(), cuda, True, 64, 256)  # host rows (streaming.HostRows)
    if torch.cuda.is_available():
        on_device = x.to(cuda)
        assert EpochGraph.usable(on_device, cuda, True, 64, 256)
        assert not EpochGraph.usable(on_device, cuda, False, 64, 256)  # autograd step
        assert not EpochGraph.usable(on_device, cuda, True, 200, 256)  # one full batch: nothing to graph

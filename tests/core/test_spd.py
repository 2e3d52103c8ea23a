"""The dual closed form's SPD solve: a float32 factor refined to the float64 answer, or float64 after all."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from glai_core.model import StructuralMLP
from glai_core.solvers import path_kernel
from glai_core.spd import refined_solve, spd_solve

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _digits_kernel(rows: int = 600) -> tuple[torch.Tensor, torch.Tensor]:
    """The doubly centred path kernel of a [32]-wide structure on real rows, and its one-hot targets."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:rows], dtype=torch.float32)
    x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-6)
    torch.manual_seed(0)
    gates = StructuralMLP(64, [32], 10).gates(x)
    kernel = path_kernel(x, gates, x, gates)
    kernel = kernel - kernel.mean(dim=0, keepdim=True) - kernel.mean(dim=1, keepdim=True) + kernel.mean()
    targets = torch.nn.functional.one_hot(torch.tensor(y[:rows]), 10).double()
    return kernel, targets - targets.mean(dim=0)


def _reference(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix))


@pytest.mark.parametrize("relative", [1e-2, 1e-1, 1.0])  # the default lambda grid
def test_the_float32_factor_reaches_the_float64_answer_on_the_lambda_grid(relative: float) -> None:
    kernel, rhs = _digits_kernel()
    matrix = kernel + relative * kernel.diagonal().mean() * torch.eye(kernel.shape[0], dtype=torch.float64)
    before = matrix.clone()
    x = refined_solve(matrix, rhs)
    assert x is not None  # the fast path is the one taken, not the fallback
    reference = _reference(matrix, rhs)
    assert float((x - reference).norm() / reference.norm()) < 1e-10
    assert torch.equal(matrix, before)  # read, never written


def test_batched_matrices_are_solved_each_on_its_own() -> None:
    kernel, rhs = _digits_kernel(300)
    eye = torch.eye(kernel.shape[0], dtype=torch.float64)
    stack = torch.stack([kernel + s * kernel.diagonal().mean() * eye for s in (1e-2, 1.0)])
    x, ok = spd_solve(stack, rhs.expand(2, -1, -1).contiguous())
    assert ok.tolist() == [True, True]
    for k in range(2):
        assert torch.allclose(x[k], _reference(stack[k], rhs), rtol=0, atol=1e-10 * float(x[k].abs().max()))


def test_an_ill_conditioned_system_falls_back_to_the_float64_factor() -> None:
    kernel, rhs = _digits_kernel(300)
    matrix = kernel + 1e-9 * kernel.diagonal().mean() * torch.eye(kernel.shape[0], dtype=torch.float64)
    assert refined_solve(matrix, rhs) is None  # beyond float32: the refinement is not trusted
    x, ok = spd_solve(matrix, rhs)
    assert bool(ok)
    reference = _reference(matrix, rhs)
    assert float((x - reference).norm() / reference.norm()) < 1e-6


def test_a_matrix_that_is_not_positive_definite_is_reported() -> None:
    kernel, rhs = _digits_kernel(300)
    eye = torch.eye(kernel.shape[0], dtype=torch.float64)
    stack = torch.stack([kernel + kernel.diagonal().mean() * eye, -eye])
    _, ok = spd_solve(stack, rhs.expand(2, -1, -1).contiguous())
    assert ok.tolist() == [True, False]  # the whole batch went to float64; only the bad one fails

"""Shared fixtures. The authors' parity vectors live in ../shared/reference beside the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The tests run tiny tensors, where intra-op threads only add overhead, and on a loaded 2-core
# machine they spin against each other (measured: one test 90 s with 2 threads, 2 s with 1).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REFERENCE_FILE = SHARED / "reference" / "jit_reference_tiny.pt"
# The README's claim: "relative error ≤ 3e-7 on their parity vectors" (network, loss, samplers).
# Measured in float32 on CPU: forward 1.2e-7, loss 6.5e-8, Euler 2.5e-7, Heun 2.4e-7.
PARITY_REL_ERR = 3e-7


@pytest.fixture(scope="session")
def reference() -> dict:
    """The parity vectors produced by the authors' code (never skipped: missing is a failure)."""
    if not REFERENCE_FILE.is_file():
        pytest.fail(
            f"parity vectors not found at {REFERENCE_FILE}: the tests expect the project's shared/ "
            "folder beside the repository root (../shared/reference/jit_reference_tiny.pt)."
        )
    return torch.load(REFERENCE_FILE, weights_only=True, map_location="cpu")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())

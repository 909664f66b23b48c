"""The process split holds at import time: the web process never loads torch, the runner never loads Litestar,
and contract/ (what both share) loads neither."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.portal import REPO_ROOT

CONTRACT = ["contract.request", "contract.models", "contract.protocol", "contract.jobdir", "contract.cost"]


def modules_loaded_by(imports: list[str]) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after importing `imports`."""
    script = f"import sys, {', '.join(imports)}; print(' '.join({{name.split('.')[0] for name in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    ("imports", "never"),
    [
        (CONTRACT, {"torch", "diffusers", "transformers", "litestar", "app", "gpu_runner"}),
        (["app.web", "app.__main__"], {"torch", "diffusers", "transformers", "gpu_runner", "av"}),
        (["gpu_runner.__main__", "gpu_runner.pipeline"], {"litestar", "uvicorn", "app"}),
        # the poster maker the portal runs at start-up: PyAV, never torch, so it cannot touch CUDA
        (["gpu_runner.__main__", "gpu_runner.poster"], {"torch", "diffusers", "litestar", "app"}),
    ],
    ids=["contract", "web process", "runner", "poster maker"],
)
def test_each_side_imports_only_its_own_stack(imports: list[str], never: set[str]) -> None:
    loaded = modules_loaded_by(imports)
    assert {imports[0].split(".")[0]} <= loaded, "the import itself happened"
    assert not loaded & never, f"{imports} loaded {sorted(loaded & never)}"

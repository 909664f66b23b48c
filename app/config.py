"""Settings, read once from AVP_* environment variables and handed out by dependency injection."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec

from gpu_runner.specs import ModelSpec, model_specs


class SettingsError(ValueError):
    """A setting has a value the portal cannot use; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_dir: Path | None = None  # a Diffusers-format LTX-2 directory
    runner_python: str = sys.executable
    max_queue: int = 20
    cancel_grace_s: float = 5.0  # SIGTERM to SIGKILL for a runner being cancelled
    shutdown_grace_s: float = 3.0  # uvicorn's wait for open connections (SSE) at shutdown
    heartbeat_s: float = 15.0
    max_upload_mb: float = 20.0  # largest image file accepted by POST /api/uploads
    upload_ttl_s: float = 86400.0  # how long an upload no job uses is kept
    log_level: str = "info"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def demo_model_dir(self) -> Path:
        return self.data_dir / "models" / "demo"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "portal.sqlite3"

    def models(self) -> dict[str, ModelSpec]:
        return model_specs(self.demo_model_dir, self.model_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, default: float, kind: type = float, minimum: float = 0) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be at least {minimum}")
            return value

        model_dir = env.get("AVP_MODEL_DIR", "").strip()
        if model_dir and not Path(model_dir).is_dir():
            raise SettingsError(
                f"AVP_MODEL_DIR={model_dir!r} is not a directory; point it at a Diffusers-format "
                "LTX-2 directory (with transformer/, vae/, text_encoder/ ...) or unset it to use the demo model"
            )
        runner_python = env.get("AVP_RUNNER_PYTHON", "").strip() or sys.executable
        if shutil.which(runner_python) is None:
            raise SettingsError(
                f"AVP_RUNNER_PYTHON={runner_python!r} is not an executable; point it at the Python "
                "of the environment where torch and diffusers are installed"
            )
        return cls(
            data_dir=Path(env.get("AVP_DATA_DIR", "").strip() or "data").resolve(),
            host=env.get("AVP_HOST", "").strip() or "127.0.0.1",
            port=int(number("AVP_PORT", 8000, int, 0)),
            model_dir=Path(model_dir).resolve() if model_dir else None,
            runner_python=runner_python,
            max_queue=int(number("AVP_MAX_QUEUE", 20, int, 1)),
            cancel_grace_s=number("AVP_CANCEL_GRACE_S", 5.0),
            shutdown_grace_s=number("AVP_SHUTDOWN_GRACE_S", 3.0),
            heartbeat_s=number("AVP_HEARTBEAT_S", 15.0, float, 0.1),
            max_upload_mb=number("AVP_MAX_UPLOAD_MB", 20.0, float, 0.01),
            upload_ttl_s=number("AVP_UPLOAD_TTL_S", 86400.0, float, 1),
            log_level=env.get("AVP_LOG_LEVEL", "").strip() or "info",
        )

"""Settings, read once from AVP_* environment variables and handed out by dependency injection."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shutil
import ssl
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

import msgspec

from app.disk import DataDisk
from app.passwords import is_password_hash
from app.runner import WARM_MARGIN_S
from app.slots import Slot, SlotMemory
from app.slots import resolve as resolve_slots
from app.webhook_targets import Allowlist
from app.webhooks import check_secret
from contract.cost import ENHANCE_MAX_NEW_TOKENS
from contract.jobdir import ATTENTION_BACKENDS, DEFAULT_ATTENTION, DEFAULT_CACHE_GB, RunnerOptions
from contract.loras import DEFAULT_MAX_MB as DEFAULT_LORA_MAX_MB
from contract.loras import FOLDER as MODEL_LORA_FOLDER
from contract.loras import Library as LoraLibrary
from contract.loras import scan as scan_loras
from contract.models import ModelSpec, Offer, Precision, offered_models


class SettingsError(ValueError):
    """A setting has a value the portal cannot use; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    model_dir: Path | None = None  # a Diffusers-format LTX-2 directory (AVP_MODEL_DIR), offered first
    models_dir: Path | None = None  # a directory of model directories (AVP_MODELS_DIR); None: <data dir>/models
    # LoRAs (issue 17): the LoRA library's folder (AVP_LORA_DIR; None: <data dir>/loras) and its largest file
    lora_dir: Path | None = None
    lora_max_mb: float = DEFAULT_LORA_MAX_MB
    runner_python: str = sys.executable
    max_queue: int = 20
    max_job_minutes: float = 60.0  # jobs predicted to take longer are refused at submit; 0: no limit
    cancel_grace_s: float = 5.0  # SIGTERM to SIGKILL for a runner being cancelled
    shutdown_grace_s: float = 3.0  # uvicorn's wait for open connections (SSE) at shutdown
    heartbeat_s: float = 15.0
    precision: str | None = None  # overrides every model's CUDA precision policy: fp8, bf16 or fp32
    cache_gb: float = DEFAULT_CACHE_GB  # every cache together (FP8 weights, prompts, compiled kernels): AVP_CACHE_GB
    prompt_cache_mb: int = 2048  # encoded prompts kept on disk (a cap inside cache_gb), least recently used first
    enhance_max_tokens: int = ENHANCE_MAX_NEW_TOKENS  # the most tokens a prompt enhancer writes (LTX-2.5)
    weight_cache: str = ""  # an absolute directory for FP8 transformers, "off", or "" for the data dir's
    # AVP_COMPILE: on a CUDA GPU, jobs compile the transformer's blocks, a graph per clip size ("on") or one graph
    # with dynamic shapes for every size ("dynamic"); "off": never
    compile_mode: str = "on"
    attention: str = DEFAULT_ATTENTION  # on a CUDA GPU, the mask-free attentions' backend (AVP_ATTENTION)
    spare_runner: bool = True  # a runner waits with torch and diffusers imported for the next job (AVP_SPARE_RUNNER)
    # warm mode (AVP_KEEP_WARM_S): a slot's runner keeps its model loaded this long after a job, for the next job of
    # the same model; 0 (the default): every runner exits after its job, holding nothing idle
    keep_warm_s: float = 0.0
    gpus: str = "auto"  # the runner slots (AVP_GPUS, app/slots.py): auto, card numbers (0,2) or cpu:N
    slot_memory_gb: str = ""  # the CPU slots' memory for admission (AVP_SLOT_MEMORY_GB): one figure, or one per slot
    ray_address: str | None = None  # AVP_RAY_ADDRESS: jobs run on this Ray cluster's nodes (app/ray_executor.py)
    max_upload_mb: float = 20.0  # largest image file accepted by POST /api/uploads
    upload_ttl_s: float = 86400.0  # how long an upload no job uses is kept
    keep_days: float | None = None  # retention: finished jobs' files are removed this many days after (AVP_KEEP_DAYS)
    keep_gb: float | None = None  # retention: the oldest finished jobs' files go beyond this many GiB (AVP_KEEP_GB)
    min_free_mb: float = 1024.0  # kept free on the data disk: jobs and uploads that would eat into it are refused
    log_level: str = "info"  # the web process's log (AVP_LOG_LEVEL)
    # LAN deployment (deploy/README.md): credentials, proxy, limits
    password_hash: str | None = None  # made by `avportal hash-password`
    api_token: str | None = None
    insecure_no_auth: bool = False
    session_hours: float = 12.0
    root_path: str = ""  # the sub-path a proxy serves the portal under, e.g. "/portal"; the proxy strips it
    trusted_proxies: str = "127.0.0.1,::1"  # whose X-Forwarded-For/-Proto uvicorn believes
    allowed_hosts: tuple[str, ...] = ()  # host names served besides loopback's (AVP_ALLOWED_HOSTS), normalised
    submit_per_minute: int = 30  # per client
    # signed webhooks (app/webhooks.py)
    webhook_allow: Allowlist = Allowlist()  # the destinations webhooks may call (AVP_WEBHOOK_ALLOW); none: refused
    webhook_secret: str | None = None  # AVP_WEBHOOK_SECRET (whsec_...); None: the data directory's
    webhook_backoff_s: float = 5.0  # the wait after a delivery's first failed attempt, doubling after each
    webhook_attempts: int = 20  # a delivery is given up after this many attempts
    webhook_ca_file: Path | None = None  # AVP_WEBHOOK_CA_FILE: the CA certificates https destinations are checked by

    @property
    def auth_enabled(self) -> bool:
        return bool(self.password_hash or self.api_token)

    def url(self, path: str) -> str:
        """`path` (absolute inside the app) as the browser must ask for it: under the root path."""
        return self.root_path + path

    def serves_host(self, host: str) -> bool:
        """Whether a request's Host header (with a port or not) names this portal: a loopback name, or one of
        AVP_ALLOWED_HOSTS. Any other name is a page on someone else's domain rebinding it to this address."""
        name = _host_name(host)
        return _is_loopback(name) or name in self.allowed_hosts

    def check_exposure(self) -> None:
        """Refuse to listen beyond this machine with nobody required to log in, or with no name to be reached by."""
        if _is_loopback(self.host):
            return
        if not (self.auth_enabled or self.insecure_no_auth):
            raise SettingsError(
                f"refusing to listen on {self.host} without credentials: anyone on the network could use the GPU "
                "and read every prompt. Set AVP_PASSWORD_HASH to the output of `avportal hash-password`, or "
                "AVP_API_TOKEN to a long random string (for example `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`), or listen on 127.0.0.1. AVP_INSECURE_NO_AUTH=1 overrides "
                "this check if something else in front of the portal authenticates users."
            )
        if not self.allowed_hosts:
            raise SettingsError(
                f"refusing to listen on {self.host} without AVP_ALLOWED_HOSTS: the portal answers only requests "
                "addressed to a name it knows (loopback's, and these). Set AVP_ALLOWED_HOSTS to the names and "
                "addresses people type to reach it, comma-separated, for example portal.lan,192.168.1.20."
            )

    def slots(self) -> tuple[tuple[Slot, ...], SlotMemory]:
        """The host's runner slots and how to read what each can hold (AVP_GPUS, AVP_SLOT_MEMORY_GB)."""
        try:
            return resolve_slots(self.gpus, self.slot_memory_gb)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def demo_model_dir(self) -> Path:
        return self.data_dir / "models" / "demo"

    @property
    def prompt_cache_dir(self) -> Path:
        return self.data_dir / "cache" / "prompts"

    @property
    def weight_cache_dir(self) -> Path | None:
        """Where FP8-stored transformers are kept between jobs; None: nowhere, every FP8 job casts again."""
        if self.weight_cache == "off":
            return None
        return Path(self.weight_cache) if self.weight_cache else self.data_dir / "cache" / "weights"

    @property
    def compile_cache_dir(self) -> Path | None:
        """Where torch keeps the compiled transformer blocks between jobs; None: jobs do not compile."""
        return None if self.compile_mode == "off" else self.data_dir / "cache" / "compiled"

    @property
    def preview_colours_dir(self) -> Path:
        """Each model's preview colour map, learnt from its first clip (gpu_runner/preview_colours.py)."""
        return self.data_dir / "preview_colours"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def data_disk(self) -> DataDisk:
        return DataDisk(self.data_dir, int(self.min_free_mb * 2**20))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "portal.sqlite3"

    def runner_options(self) -> RunnerOptions:
        """What every job's runner is told of this installation's settings (in its job.json)."""
        weight_cache_dir, compile_cache_dir = self.weight_cache_dir, self.compile_cache_dir
        return RunnerOptions(
            precision=self.precision,
            prompt_cache_dir=str(self.prompt_cache_dir),
            prompt_cache_mb=self.prompt_cache_mb,
            enhance_max_tokens=self.enhance_max_tokens,
            weight_cache_dir=None if weight_cache_dir is None else str(weight_cache_dir),
            compile_cache_dir=None if compile_cache_dir is None else str(compile_cache_dir),
            attention=self.attention,
            compile_dynamic=self.compile_mode == "dynamic",
            cache_gb=self.cache_gb,
            preview_colours_dir=str(self.preview_colours_dir),
            lora_dirs=tuple(str(folder) for folder in self.lora_folders()),
        )

    @property
    def library_dir(self) -> Path:
        """Where model directories are looked for: AVP_MODELS_DIR, else the data dir's models/ (the demo's home)."""
        return self.models_dir or self.data_dir / "models"

    def library(self) -> Offer:
        """The models offered and the model directories found that cannot be, read from their configs at most
        LIBRARY_REREAD_S ago (pages and event streams ask for them often; a scan reads every model's configs)."""
        key = (self.demo_model_dir, self.library_dir, self.model_dir)
        read_at, offer = _library_reads.get(key, (-math.inf, None))
        if offer is None or time.monotonic() - read_at > LIBRARY_REREAD_S:
            offer = offered_models(self.demo_model_dir, self.library_dir, self.model_dir)
            _library_reads[key] = (time.monotonic(), offer)
        return offer

    @property
    def loras_dir(self) -> Path:
        """The LoRA library's folder: AVP_LORA_DIR, else the data dir's loras/."""
        return self.lora_dir or self.data_dir / "loras"

    def lora_folders(self) -> tuple[Path, ...]:
        """Where LoRAs are found: AVP_LORA_DIR first, then each offered model's own loras/ (the demo ships one)."""
        return (self.loras_dir, *(Path(spec.path) / MODEL_LORA_FOLDER for spec in self.models().values()))

    def lora_library(self) -> LoraLibrary:
        """The LoRAs found, read from their headers at most LIBRARY_REREAD_S ago (contract/loras.py)."""
        folders = self.lora_folders()
        key = ("loras", folders, self.lora_max_mb)
        read_at, found = _library_reads.get(key, (-math.inf, None))
        if found is None or time.monotonic() - read_at > LIBRARY_REREAD_S:
            found = scan_loras(folders, int(self.lora_max_mb * 2**20))
            _library_reads[key] = (time.monotonic(), found)
        return found

    def models(self) -> dict[str, ModelSpec]:
        """The models offered, the default first."""
        return self.library().models

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
            if not math.isfinite(value) or value < minimum:  # nan compares as neither
                raise SettingsError(f"{name}={raw!r} must be a number of at least {minimum}")
            return value

        def limit(name: str, unset: str = "for no limit") -> float | None:
            """A limit: a positive number, or None when unset (which means `unset`)."""
            raw = env.get(name, "").strip()
            if not raw:
                return None
            try:
                value = float(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a float") from None
            if not 0 < value < math.inf:  # nan compares as neither
                raise SettingsError(f"{name}={raw!r} must be a number above 0, or unset {unset}")
            return value

        model_dir = env.get("AVP_MODEL_DIR", "").strip()
        if model_dir and not Path(model_dir).is_dir():
            raise SettingsError(
                f"AVP_MODEL_DIR={model_dir!r} is not a directory; point it at a Diffusers-format "
                "LTX-2 directory (with transformer/, vae/, text_encoder/ ...) or unset it to use the demo model"
            )
        models_dir = env.get("AVP_MODELS_DIR", "").strip()
        if models_dir and not Path(models_dir).is_dir():
            raise SettingsError(
                f"AVP_MODELS_DIR={models_dir!r} is not a directory; point it at a directory holding Diffusers-format "
                "LTX-2 model directories, or unset it for <data dir>/models"
            )
        lora_dir = env.get("AVP_LORA_DIR", "").strip()
        if lora_dir and Path(lora_dir).exists() and not Path(lora_dir).is_dir():
            raise SettingsError(
                f"AVP_LORA_DIR={lora_dir!r} is not a directory; point it at the folder of your .safetensors LoRAs, "
                "or unset it for <data dir>/loras"
            )
        precision = env.get("AVP_PRECISION", "").strip() or None
        if precision is not None and precision not in get_args(Precision):
            raise SettingsError(f"AVP_PRECISION={precision!r} is not one of {', '.join(get_args(Precision))}")
        runner_python = env.get("AVP_RUNNER_PYTHON", "").strip() or sys.executable
        if shutil.which(runner_python) is None:
            raise SettingsError(
                f"AVP_RUNNER_PYTHON={runner_python!r} is not an executable; point it at the Python "
                "of the environment where torch and diffusers are installed"
            )
        weight_cache = env.get("AVP_WEIGHT_CACHE_DIR", "").strip()
        if weight_cache and weight_cache != "off":
            if Path(weight_cache).exists() and not Path(weight_cache).is_dir():
                raise SettingsError(
                    f"AVP_WEIGHT_CACHE_DIR={weight_cache!r} is not a directory; point it at one (it is created "
                    "if missing), set it to off, or unset it for <data dir>/cache/weights"
                )
            weight_cache = str(Path(weight_cache).resolve())
        compile_mode = env.get("AVP_COMPILE", "").strip() or "on"
        if compile_mode not in COMPILE_CHOICES:
            raise SettingsError(
                f"AVP_COMPILE={compile_mode!r} must be on (the default: a compiled graph per clip size), "
                "dynamic (one graph for every size) or off"
            )
        attention = env.get("AVP_ATTENTION", "").strip() or DEFAULT_ATTENTION
        if attention not in ATTENTION_BACKENDS:
            raise SettingsError(
                f"AVP_ATTENTION={attention!r} must be one of {', '.join(ATTENTION_BACKENDS)} "
                f"(default {DEFAULT_ATTENTION})"
            )
        spare_runner = env.get("AVP_SPARE_RUNNER", "").strip() or "on"
        if spare_runner not in ("on", "off"):
            raise SettingsError(f"AVP_SPARE_RUNNER={spare_runner!r} must be on (the default) or off")
        keep_warm_s = _keep_warm_s(env.get("AVP_KEEP_WARM_S", ""))
        log_level = env.get("AVP_LOG_LEVEL", "").strip().lower() or "info"
        if log_level not in LOG_LEVELS:
            raise SettingsError(f"AVP_LOG_LEVEL={log_level!r} must be one of {', '.join(LOG_LEVELS)} (default info)")
        min_free_mb = number("AVP_MIN_FREE_MB", 1024.0)
        root_path = env.get("AVP_ROOT_PATH", "").strip().rstrip("/")
        if root_path and not _ROOT_PATH.fullmatch(root_path):
            raise SettingsError(
                f"AVP_ROOT_PATH={root_path!r} must look like /portal: a leading slash, then letters, digits, "
                "'-', '_', '.' or more '/'-separated parts"
            )
        api_token = env.get("AVP_API_TOKEN", "").strip() or None
        if api_token is not None and len(api_token) < MIN_TOKEN_CHARS:
            raise SettingsError(f"AVP_API_TOKEN is too short: use at least {MIN_TOKEN_CHARS} random characters")
        allowed_hosts = tuple(
            _allowed_host(name) for name in env.get("AVP_ALLOWED_HOSTS", "").split(",") if name.strip()
        )
        password_hash = env.get("AVP_PASSWORD_HASH", "").strip() or None
        if password_hash is not None and not is_password_hash(password_hash):
            raise SettingsError(
                "AVP_PASSWORD_HASH is not a hash made by `avportal hash-password` (scrypt:N:r:p:salt:digest)"
            )
        try:
            webhook_allow = Allowlist.parse(env.get("AVP_WEBHOOK_ALLOW", ""))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        webhook_secret = env.get("AVP_WEBHOOK_SECRET", "").strip() or None
        if webhook_secret is not None:
            try:
                check_secret(webhook_secret)
            except ValueError as exc:
                raise SettingsError(f"AVP_WEBHOOK_SECRET {exc}") from None
        webhook_ca_file = env.get("AVP_WEBHOOK_CA_FILE", "").strip() or None
        if webhook_ca_file is not None:
            webhook_ca_file = _ca_file(webhook_ca_file)
        settings = cls(
            data_dir=Path(env.get("AVP_DATA_DIR", "").strip() or "data").resolve(),
            host=env.get("AVP_HOST", "").strip() or "127.0.0.1",
            port=int(number("AVP_PORT", 8000, int, 0)),
            model_dir=Path(model_dir).resolve() if model_dir else None,
            models_dir=Path(models_dir).resolve() if models_dir else None,
            lora_dir=Path(lora_dir).resolve() if lora_dir else None,
            lora_max_mb=number("AVP_LORA_MAX_MB", DEFAULT_LORA_MAX_MB, float, 1),
            runner_python=runner_python,
            max_queue=int(number("AVP_MAX_QUEUE", 20, int, 1)),
            max_job_minutes=number("AVP_MAX_JOB_MINUTES", 60.0),
            cancel_grace_s=number("AVP_CANCEL_GRACE_S", 5.0),
            shutdown_grace_s=number("AVP_SHUTDOWN_GRACE_S", 3.0),
            heartbeat_s=number("AVP_HEARTBEAT_S", 15.0, float, 0.1),
            precision=precision,
            cache_gb=limit("AVP_CACHE_GB", f"for {DEFAULT_CACHE_GB:g} GiB") or DEFAULT_CACHE_GB,
            prompt_cache_mb=int(number("AVP_PROMPT_CACHE_MB", 2048, int, 0)),
            enhance_max_tokens=int(number("AVP_ENHANCE_MAX_TOKENS", ENHANCE_MAX_NEW_TOKENS, int, 1)),
            weight_cache=weight_cache,
            compile_mode=compile_mode,
            attention=attention,
            spare_runner=spare_runner == "on",
            keep_warm_s=keep_warm_s,
            max_upload_mb=number("AVP_MAX_UPLOAD_MB", 20.0, float, 0.01),
            upload_ttl_s=number("AVP_UPLOAD_TTL_S", 86400.0, float, 1),
            keep_days=limit("AVP_KEEP_DAYS"),
            keep_gb=limit("AVP_KEEP_GB"),
            min_free_mb=min_free_mb,
            log_level=log_level,
            password_hash=password_hash,
            api_token=api_token,
            insecure_no_auth=env.get("AVP_INSECURE_NO_AUTH", "").strip() == "1",
            session_hours=number("AVP_SESSION_HOURS", 12.0, float, 0.01),
            root_path=root_path,
            trusted_proxies=env.get("AVP_TRUSTED_PROXIES", "").strip() or "127.0.0.1,::1",
            submit_per_minute=int(number("AVP_SUBMIT_PER_MINUTE", 30, int, 1)),
            allowed_hosts=allowed_hosts,
            webhook_allow=webhook_allow,
            webhook_secret=webhook_secret,
            webhook_backoff_s=number("AVP_WEBHOOK_BACKOFF_S", 5.0, float, 0.01),
            webhook_attempts=int(number("AVP_WEBHOOK_ATTEMPTS", 20, int, 1)),
            webhook_ca_file=webhook_ca_file,
            gpus=env.get("AVP_GPUS", "").strip() or "auto",
            slot_memory_gb=env.get("AVP_SLOT_MEMORY_GB", "").strip(),
            ray_address=env.get("AVP_RAY_ADDRESS", "").strip() or None,
        )
        settings.slots()  # a card that does not exist, or a bad slot setting, stops the start with its reason
        return settings


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's names
COMPILE_CHOICES = ("on", "dynamic", "off")  # AVP_COMPILE
MIN_TOKEN_CHARS = 16
LIBRARY_REREAD_S = 2.0  # a model directory added, repaired or removed shows within this long
_library_reads: dict[tuple, tuple[float, Offer | LoraLibrary]] = {}  # the models' and the LoRAs' reads
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _host_name(host: str) -> str:
    """The name in a Host header or setting, as compared: lower case, no port, no trailing dot, IPv6 in brackets."""
    host = host.strip().lower()
    name = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return name.rstrip(".")


# A warm runner kept for less could take no next job (app/runner.py lets it go WARM_MARGIN_S before its own clock).
MIN_KEEP_WARM_S = 5.0


def _keep_warm_s(raw: str) -> float:
    """AVP_KEEP_WARM_S: seconds a runner keeps its model loaded after a job; unset or 0 is off."""
    raw = raw.strip()
    fix = "set it to the seconds a runner keeps its model loaded after a job (e.g. 300), or 0 or unset for off"
    try:
        value = float(raw or 0)
    except ValueError:
        raise SettingsError(f"AVP_KEEP_WARM_S={raw!r} is not a number; {fix}") from None
    if not 0 <= value < math.inf:  # nan compares as neither
        raise SettingsError(f"AVP_KEEP_WARM_S={raw!r} must be 0 or more; {fix}")
    if 0 < value < MIN_KEEP_WARM_S:
        raise SettingsError(
            f"AVP_KEEP_WARM_S={raw!r} is too short for a next job: the portal lets a warm runner go "
            f"{WARM_MARGIN_S:g} s before its time, so use {MIN_KEEP_WARM_S:g} or more; {fix}"
        )
    return value


def _allowed_host(raw: str) -> str:
    """One entry of AVP_ALLOWED_HOSTS, normalised as Host headers are: a DNS name, or an IP address."""
    try:
        address = ipaddress.ip_address(raw.strip().strip("[]"))
    except ValueError:
        name = raw.strip().lower().rstrip(".")
        if _HOST_NAME.fullmatch(name):
            return name
        raise SettingsError(
            f"AVP_ALLOWED_HOSTS entry {raw.strip()!r} is not a host name or address; list the names people type "
            "to reach the portal, without scheme or port, comma-separated: portal.lan,192.168.1.20"
        ) from None
    return f"[{address}]" if address.version == 6 else str(address)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def _ca_file(value: str) -> Path:
    """AVP_WEBHOOK_CA_FILE as a path whose PEM certificates load (so a typo stops the portal at start, not each
    delivery), or a SettingsError saying what is wrong."""
    path = Path(value).resolve()
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(
            f"AVP_WEBHOOK_CA_FILE {path} cannot be read as PEM CA certificates ({exc.strerror or exc}); "
            "point it at a readable PEM bundle, or leave it unset to trust the public CAs"
        ) from None
    return path

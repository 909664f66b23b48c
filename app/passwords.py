"""Password hashes for AVP_PASSWORD_HASH: salted scrypt (stdlib), checked in constant time.

The encoded form, `scrypt:N:r:p:<salt>:<digest>` in URL-safe base64, holds no `$`, so it can be
pasted into a shell, a systemd EnvironmentFile or a compose file without quoting surprises.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "scrypt"
_N, _R, _P = 2**14, 8, 1  # ~50 ms and 16 MiB per check: cheap for a login, costly for a guesser
_SALT_BYTES, _DIGEST_BYTES = 16, 32


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=_DIGEST_BYTES)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(_SALT_BYTES)
    return ":".join((PREFIX, str(_N), str(_R), str(_P), _b64(salt), _b64(_scrypt(password, salt, _N, _R, _P))))


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split(":")
    if len(parts) != 6 or parts[0] != PREFIX:
        return None
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        return None
    if n < 2 or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) or len(digest) != _DIGEST_BYTES:
        return None
    return n, r, p, salt, digest


def is_password_hash(encoded: str) -> bool:
    return _parse(encoded) is not None


def verify_password(password: str, encoded: str) -> bool:
    parsed = _parse(encoded)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)

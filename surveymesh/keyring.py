"""Key lists of the mesh's AES-256-GCM encryption: ``kid:base64key,...``.

One format serves every key list (``SURVEYMESH_PAYLOAD_KEYS`` for Temporal payloads,
``SURVEYMESH_SECRET_KEYS`` for webhook secrets at rest): the last key encrypts, all of
them decrypt, so a rotation appends a key. Kept apart from :mod:`surveymesh.codec` so that
a process without Temporal (NotificationService) reads key lists without importing it.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from surveymesh.config import ConfigError

NONCE_BYTES = 12
KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def parse_keys(spec: str, *, source: str = "SURVEYMESH_PAYLOAD_KEYS") -> dict[str, bytes]:
    """Parses ``kid:base64key,...`` into an ordered ``{kid: key}`` (the last one is newest).

    Raises:
        ConfigError: a malformed entry, a duplicate key id, or a key that is not 32 bytes.
    """
    keys: dict[str, bytes] = {}
    for entry in (e.strip() for e in spec.replace("\n", ",").split(",")):
        if not entry:
            continue
        kid, sep, encoded = entry.partition(":")
        if not sep or not _KID.match(kid):
            raise ConfigError(f"{source}: entries are kid:base64key (kid of [A-Za-z0-9._-])")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ConfigError(f"{source}: key {kid!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{source}: key {kid!r} must be {KEY_BYTES} bytes (AES-256)")
        if kid in keys:
            raise ConfigError(f"{source}: key id {kid!r} appears twice")
        keys[kid] = key
    if not keys:
        raise ConfigError(f"{source}: no keys")
    return keys


def new_key_entry(kid: str) -> str:
    """A fresh ``kid:base64key`` entry (for a rotation: append it to the list)."""
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"

"""Key lists of the mesh's AES-256-GCM encryption: ``kid:base64key,...``.

One format serves every key list (``SURVEYMESH_PAYLOAD_KEYS`` for Temporal payloads,
``SURVEYMESH_SECRET_KEYS`` for webhook secrets at rest): the last key encrypts, all of
them decrypt, so a rotation appends a key. Kept apart from :mod:`surveymesh.codec` so that
a process without Temporal (NotificationService) reads key lists without importing it.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


def keys_from(spec: str, key_file: Path, *, setting: str) -> dict[str, bytes]:
    """The keys of ``spec`` (the value of ``setting``) or, when it is empty, of ``key_file``,
    which is made with one new key the first time.

    The file appears whole or not at all (written aside, then hard-linked into place), so
    processes of one mesh racing to create it all read the same single key.

    Raises:
        ConfigError: the setting or the file is malformed.
    """
    if spec:
        return parse_keys(spec, source=setting)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        draft = key_file.with_name(f".{key_file.name}.{uuid.uuid4().hex}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key_entry("dev-1") + "\n")
        try:
            os.link(draft, key_file)
        except FileExistsError:
            pass  # another process made it first: its key is the key
        finally:
            draft.unlink()
    return parse_keys(key_file.read_text(), source=str(key_file))


class KeyRing:
    """AES-256-GCM ciphers by key id: the newest key encrypts, any of them decrypts.

    Args:
        keys: ``{kid: 32-byte key}`` in age order; the last one encrypts.

    Attributes:
        active: The id of the key that encrypts.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        for kid, key in keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {kid!r} must be {KEY_BYTES} bytes")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self.active = list(keys)[-1]

    def encrypting(self) -> tuple[str, AESGCM]:
        """The id and cipher of the key that encrypts."""
        return self.active, self._ciphers[self.active]

    def cipher(self, kid: str) -> AESGCM | None:
        """The cipher of key ``kid``, or None for a key this process does not hold."""
        return self._ciphers.get(kid)

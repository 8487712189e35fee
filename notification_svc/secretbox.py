"""Encryption at rest of webhook signing secrets: AES-256-GCM with rotating keys.

Whoever holds an endpoint's signing secret can forge deliveries its receiver trusts, so a
dump of the database must not reveal it. ``webhook_endpoints.secret`` and
``previous_secret`` therefore hold ``enc:v1:<kid>:<base64(nonce | ciphertext | tag)>``:
the key id names the key that opens the value, and the associated data binds it to its
endpoint id (and key id), so a value copied into another endpoint's row does not decrypt
there: that delivery fails instead of being signed with a foreign secret.

Keys: ``SURVEYMESH_SECRET_KEYS`` is a comma list of ``kid:base64key`` (32-byte keys), the
same format as ``SURVEYMESH_PAYLOAD_KEYS`` and parsed by the same code
(:func:`surveymesh.keyring.parse_keys`): the last key encrypts, all of them decrypt. A key
rotation appends a key; every replica re-encrypts the rows still under an older key when
it starts (:meth:`notification_svc.webhooks.WebhookEndpoints.reseal_all`), after which the
old key can be dropped. Without the setting a key is generated into the data dir's
``secret-keys`` file on first use, which serves the one-machine mesh of ``surveymesh up``
(all its processes share the data dir); deployments with replicas must set the variable.

Rows written before encryption hold the plain ``whsec_...`` secret; they stay readable and
are re-encrypted at start and by ``RotateWebhookSecret``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import uuid
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag

from surveymesh.config import Settings
from surveymesh.keyring import NONCE_BYTES, KeyRing, keys_from

log = logging.getLogger(__name__)

PREFIX = "enc:v1:"
KEY_FILE = "secret-keys"
SETTING = "SURVEYMESH_SECRET_KEYS"


class SecretUnreadable(ValueError):
    """A stored secret cannot be decrypted."""


class UnknownSecretKey(SecretUnreadable):
    """The value is encrypted with a key id this process does not hold (configuration)."""


class SecretDoesNotVerify(SecretUnreadable):
    """The value does not verify for this endpoint: tampered, corrupt, or another row's."""


def load_secret_keys(settings: Settings) -> dict[str, bytes]:
    """The deployment's secret keys: ``SURVEYMESH_SECRET_KEYS``, or the data dir's file.

    Raises:
        ConfigError: the setting or the file is malformed.
    """
    path = settings.data_dir / KEY_FILE
    if not settings.secret_keys and not settings.dev_mode:
        # Fine for one machine; replicas with data dirs of their own would each make a key
        # and could not read each other's rows.
        log.warning(
            "%s is not set: webhook secrets are encrypted with the key in %s", SETTING, path
        )
    return keys_from(settings.secret_keys, path, setting=SETTING)


class SecretBox:
    """Seals and opens webhook secrets; the newest key seals, any key opens.

    Args:
        keys: ``{kid: 32-byte key}`` in age order; the last one encrypts.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = KeyRing(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """The box of this deployment (see :func:`load_secret_keys`)."""
        return cls(load_secret_keys(settings))

    @property
    def active_key_id(self) -> str:
        """The id of the key new values are sealed with."""
        return self._keys.active

    @staticmethod
    def _aad(endpoint_id: uuid.UUID, kid: str) -> bytes:
        return f"surveymesh.webhook-secret/{endpoint_id}/{kid}".encode()

    def seal(self, endpoint_id: uuid.UUID, secret: str) -> str:
        """The stored form of ``secret`` for this endpoint, under the newest key."""
        kid, cipher = self._keys.encrypting()
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, secret.encode(), self._aad(endpoint_id, kid))
        return f"{PREFIX}{kid}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, endpoint_id: uuid.UUID, stored: str) -> str:
        """The secret a stored value holds; a legacy plaintext value is returned as it is.

        Raises:
            UnknownSecretKey: the value's key id is not among this box's keys.
            SecretDoesNotVerify: malformed, tampered, or sealed for another endpoint.
        """
        if not stored.startswith(PREFIX):
            return stored  # written before encryption at rest
        kid, sep, encoded = stored[len(PREFIX) :].partition(":")
        if not sep:
            raise SecretDoesNotVerify("stored secret is malformed")
        cipher = self._keys.cipher(kid)
        if cipher is None:
            raise UnknownSecretKey(f"stored secret is encrypted with key {kid!r}, not in {SETTING}")
        try:
            blob = base64.b64decode(encoded, validate=True)
            plain = cipher.decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._aad(endpoint_id, kid)
            )
            return plain.decode()
        except (binascii.Error, InvalidTag, ValueError):
            raise SecretDoesNotVerify(
                "stored secret does not decrypt for this endpoint (tampered, or another row's)"
            ) from None

    @property
    def active_prefix(self) -> str:
        """How every value sealed with the newest key starts."""
        return f"{PREFIX}{self._keys.active}:"

    def is_current(self, stored: str) -> bool:
        """Whether a stored value is already sealed with the newest key."""
        return stored.startswith(self.active_prefix)

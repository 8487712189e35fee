"""Encryption of every Temporal payload: AES-256-GCM with rotating keys.

Temporal stores workflow inputs, activity results and failures in its history; in
SurveyMesh those can hold personal data (a survey answer in an error message, say). Every
client and worker therefore uses :func:`data_converter`, whose codec encrypts each payload
before it leaves the process, and whose failure converter moves failure messages and stack
traces into an (encrypted) payload too. The Temporal server, its database and anyone who
reads its history without a key see ciphertext only.

Keys: ``SURVEYMESH_PAYLOAD_KEYS`` is a comma list of ``kid:base64key`` (32-byte keys); the
last one encrypts, all of them decrypt, so a rotation appends a key, and the old one is
dropped only once no history that needs it is kept. Without the setting a development key
is generated into the data dir's ``payload-keys`` file on first use. Each payload records
its key id in its metadata.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from surveymesh.config import Settings

# The key-list format lives in surveymesh.keyring (shared with webhook-secret encryption);
# these names stay importable from here.
from surveymesh.keyring import KEY_BYTES as KEY_BYTES
from surveymesh.keyring import NONCE_BYTES as NONCE_BYTES
from surveymesh.keyring import KeyRing, keys_from
from surveymesh.keyring import new_key_entry as new_key_entry
from surveymesh.keyring import parse_keys as parse_keys

ENCODING = b"binary/encrypted"
METADATA_ENCODING = "encoding"
METADATA_KEY_ID = "encryption-key-id"
KEY_FILE = "payload-keys"


class PayloadDecryptionError(ValueError):
    """A payload cannot be decrypted: unknown key id, or tampered/corrupt ciphertext."""


def load_keys(settings: Settings) -> dict[str, bytes]:
    """The deployment's payload keys: the setting, or the data dir's file (made once)."""
    return keys_from(
        settings.payload_keys, settings.data_dir / KEY_FILE, setting="SURVEYMESH_PAYLOAD_KEYS"
    )


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM payload codec; encrypts with the newest key, decrypts with any.

    The whole serialized payload (its metadata included, so the original encoding is
    hidden too) is encrypted; the key id is bound as associated data, so a payload cannot
    be passed off as encrypted under another key.

    Args:
        keys: ``{kid: 32-byte key}`` in age order; the last one encrypts.
    """

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._keys = KeyRing(keys)

    @property
    def active_key_id(self) -> str:
        """The id of the key new payloads are encrypted with."""
        return self._keys.active

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypts each payload with the newest key."""
        kid, cipher = self._keys.encrypting()
        out = []
        for p in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, p.SerializeToString(), kid.encode())
            out.append(
                Payload(
                    metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: kid.encode()},
                    data=nonce + sealed,
                )
            )
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypts encrypted payloads; others (written before encryption) pass unchanged.

        Raises:
            PayloadDecryptionError: an unknown key id, or the ciphertext does not verify.
        """
        out = []
        for p in payloads:
            if p.metadata.get(METADATA_ENCODING) != ENCODING:
                out.append(p)
                continue
            kid = p.metadata.get(METADATA_KEY_ID, b"").decode("utf-8", "replace")
            cipher = self._keys.cipher(kid)
            if cipher is None:
                raise PayloadDecryptionError(f"payload encrypted with unknown key {kid!r}")
            try:
                plain = cipher.decrypt(p.data[:NONCE_BYTES], p.data[NONCE_BYTES:], kid.encode())
            except InvalidTag:
                raise PayloadDecryptionError(
                    f"payload under key {kid!r} does not verify (tampered or corrupt)"
                ) from None
            out.append(Payload.FromString(plain))
        return out


def codec(settings: Settings) -> EncryptionCodec:
    """The deployment's payload codec."""
    return EncryptionCodec(load_keys(settings))


def data_converter(settings: Settings) -> DataConverter:
    """The data converter every Temporal client and worker of the mesh uses.

    Payloads are encrypted by :class:`EncryptionCodec`; failures keep only a generic
    message in the clear, their real message and stack trace travel in an encrypted
    payload (``encode_common_attributes``).
    """
    return dataclasses.replace(
        DataConverter.default,
        payload_codec=codec(settings),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def configured_data_converter(settings: Settings) -> DataConverter:
    """The converter of this process: encrypted when ``SURVEYMESH_PAYLOAD_KEYS`` is set.

    Every client and worker of one deployment must agree, so encryption follows the one
    setting they share: deployments set it from a secret, and ``surveymesh up`` sets it for
    its children from the data dir's key file. Unset, payloads use the default converter.
    """
    return data_converter(settings) if settings.payload_keys else DataConverter.default


def payload_keys_for_mesh(settings: Settings) -> str:
    """The ``SURVEYMESH_PAYLOAD_KEYS`` value a one-machine mesh gives its children."""
    return ",".join(
        f"{kid}:{base64.b64encode(key).decode()}" for kid, key in load_keys(settings).items()
    )

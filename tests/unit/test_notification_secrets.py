"""Unit tests of webhook-secret encryption at rest and of the retention settings."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from notification_svc.dispatcher import DeliveryPolicy
from notification_svc.secretbox import (
    PREFIX,
    SecretBox,
    SecretDoesNotVerify,
    UnknownSecretKey,
    load_secret_keys,
)
from notification_svc.webhooks import new_secret
from surveymesh.config import ConfigError, Settings
from surveymesh.keyring import new_key_entry, parse_keys

OLD, NEW = new_key_entry("k-old"), new_key_entry("k-new")


def test_sealed_value_names_its_key_and_hides_the_secret() -> None:
    box = SecretBox(parse_keys(OLD))
    endpoint, secret = uuid.uuid4(), new_secret()
    stored = box.seal(endpoint, secret)
    assert stored.startswith(f"{PREFIX}k-old:")
    assert secret not in stored and secret.removeprefix("whsec_") not in stored
    assert box.seal(endpoint, secret) != stored  # a fresh nonce every time
    assert box.open(endpoint, stored) == secret
    assert box.is_current(stored)


def test_value_is_bound_to_its_endpoint() -> None:
    box = SecretBox(parse_keys(OLD))
    stored = box.seal(uuid.uuid4(), new_secret())
    with pytest.raises(SecretDoesNotVerify):
        box.open(uuid.uuid4(), stored)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB"),  # tag broken
        lambda s: s.rsplit(":", 1)[0] + ":not base64!",
        lambda s: s.rsplit(":", 1)[0],  # no key id separator left
        lambda s: s.rsplit(":", 1)[0] + ":AAAA",  # shorter than a nonce
    ],
)
def test_tampered_values_do_not_verify(mangle: object) -> None:
    box = SecretBox(parse_keys(OLD))
    endpoint = uuid.uuid4()
    stored = box.seal(endpoint, new_secret())
    with pytest.raises(SecretDoesNotVerify):
        box.open(endpoint, mangle(stored))  # type: ignore[operator]


def test_key_rotation_new_key_seals_old_keys_open() -> None:
    endpoint, secret = uuid.uuid4(), new_secret()
    before = SecretBox(parse_keys(OLD)).seal(endpoint, secret)
    rotated = SecretBox(parse_keys(f"{OLD},{NEW}"))
    assert rotated.active_key_id == "k-new"
    assert rotated.open(endpoint, before) == secret
    assert not rotated.is_current(before)
    after = rotated.seal(endpoint, secret)
    assert after.startswith(f"{PREFIX}k-new:")
    only_new = SecretBox(parse_keys(NEW))
    assert only_new.open(endpoint, after) == secret
    with pytest.raises(UnknownSecretKey):
        only_new.open(endpoint, before)


def test_legacy_plaintext_is_read_as_it_is() -> None:
    box = SecretBox(parse_keys(OLD))
    legacy = new_secret()
    assert box.open(uuid.uuid4(), legacy) == legacy
    assert not box.is_current(legacy)


def test_keys_come_from_the_setting_or_a_private_data_dir_file(tmp_path: Path) -> None:
    assert list(load_secret_keys(Settings(secret_keys=f"{OLD},{NEW}"))) == ["k-old", "k-new"]
    with pytest.raises(ConfigError):
        load_secret_keys(Settings(secret_keys="k1:c2hvcnQ="))  # not 32 bytes
    first = load_secret_keys(Settings(data_dir=tmp_path))
    assert load_secret_keys(Settings(data_dir=tmp_path)) == first  # made once, then read
    assert (tmp_path / "secret-keys").stat().st_mode & 0o777 == 0o600
    assert Settings.from_env({"SURVEYMESH_SECRET_KEYS": OLD}).secret_keys == OLD


def test_retention_setting() -> None:
    assert DeliveryPolicy.from_env({}).retention_days == 30
    assert (
        DeliveryPolicy.from_env({"SURVEYMESH_NOTIFICATION_RETENTION_DAYS": "0"}).retention_days == 0
    )
    assert (
        DeliveryPolicy.from_env({"SURVEYMESH_NOTIFICATION_RETENTION_DAYS": "7"}).retention_days == 7
    )
    for bad in ("-1", "1.5", "week"):
        with pytest.raises(ConfigError):
            DeliveryPolicy.from_env({"SURVEYMESH_NOTIFICATION_RETENTION_DAYS": bad})

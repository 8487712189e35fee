"""A status with many or huge violations still fits the clients' trailing-metadata limit."""

from __future__ import annotations

import base64

from google.rpc import error_details_pb2, status_pb2

from surveymesh.errors import FieldViolation, InvalidArgument, NotFound, to_status


def _status_bytes(status) -> bytes:  # type: ignore[no-untyped-def]
    return dict(status.trailing_metadata)["grpc-status-details-bin"]


def test_hundreds_of_violations_are_summarised_and_clipped() -> None:
    error = InvalidArgument(
        [FieldViolation(f'attributes["{"k" * 70_000}{i}"]', "d" * 5000, "BAD") for i in range(300)]
    )
    raw = _status_bytes(to_status(error, "surveymesh.test"))
    # Sent base64-encoded; clients accept 8 KiB of metadata by default.
    assert len(base64.b64encode(raw)) < 8 * 1024
    status = status_pb2.Status.FromString(raw)
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert len(bad.field_violations) == 17
    assert bad.field_violations[-1].reason == "TOO_MANY_VIOLATIONS"
    assert bad.field_violations[-1].description == "and 284 more violations"


def test_echoed_input_in_messages_and_metadata_is_clipped() -> None:
    error = NotFound(
        "survey " + "x" * 100_000 + " not found", metadata={"survey_id": "x" * 100_000}
    )
    raw = _status_bytes(to_status(error, "surveymesh.test"))
    assert len(base64.b64encode(raw)) < 2 * 1024

"""Wire-level views of ImportResponses messages, for validating rows without upb wrappers.

Reading a nested message through the Python protobuf API creates a wrapper object per
answer, which costs about 2 µs each on first access and dominated an import. These view
types have the same field numbers and wire types as the real messages but declare the
nested messages as ``bytes``: ``ImportRequestView`` hands over each row's encoding as it
came, which :class:`~delivery_svc.validation.RowFilter` checks and the import stores as
is; ``AttributeEntryView`` decodes one ``Response.attributes`` map entry.

Because field numbers and wire types match, the C parser accepts exactly the structure
it accepts for the real types, and ``string`` fields are UTF-8 checked the same way.

Nothing here is part of the API; the messages live in a private descriptor pool.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# (message, [(field, number, type, label)]) mirroring delivery_service.proto/response.proto.
_VIEWS: list[tuple[str, list[tuple[str, int, int, int]]]] = [
    # surveymesh.delivery.v1.ImportResponsesRequest
    ("ImportRequestView", [("survey_id", 1, _STRING, _ONE), ("responses", 2, _BYTES, _MANY)]),
    # One entry of Response.attributes (map<string, string>).
    ("AttributeEntryView", [("key", 1, _STRING, _ONE), ("value", 2, _STRING, _ONE)]),
]


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="delivery_svc/wire_views.proto", package="delivery_svc.wire", syntax="proto3"
    )
    for name, fields in _VIEWS:
        message = file.message_type.add(name=name)
        for field, number, kind, label in fields:
            message.field.add(name=field, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    classes = message_factory.GetMessageClassesForFiles([file.name], pool)
    return {name: classes[f"delivery_svc.wire.{name}"] for name, _ in _VIEWS}


_CLASSES = _build()
ImportRequestView: Any = _CLASSES["ImportRequestView"]
AttributeEntryView: Any = _CLASSES["AttributeEntryView"]


def varint(n: int) -> bytes:
    """The protobuf base-128 varint encoding of ``n >= 0``."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)

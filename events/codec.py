"""JSON encoding of events, with validation on the way in and upcasting on the way out."""

from __future__ import annotations

from typing import Any

import msgspec

from events.errors import InvalidEventError, UnknownKindError
from events.kinds import KINDS, Event
from events.upcasting import CURRENT_SCHEMA, upcast

_encoder = msgspec.json.Encoder()
_decoders = {kind: msgspec.json.Decoder(cls) for kind, cls in KINDS.items()}
_decoders_by_type = {cls: _decoders[kind] for kind, cls in KINDS.items()}  # encode_checked: one lookup per event
_generic = msgspec.json.Decoder()


def kind_of(event: Event) -> str:
    """The envelope `kind` of an event (its Struct's name), refusing anything else."""
    kind = type(event).__name__
    if KINDS.get(kind) is not type(event):
        raise UnknownKindError(f"not an event: {type(event).__name__!r}; known kinds: {', '.join(KINDS)}")
    return kind


def encode(event: Event) -> bytes:
    """Encode an event as stored, refusing one that would not decode back."""
    return encode_checked(event)[0]


def encode_checked(event: Event) -> tuple[bytes, Event]:
    """Encode an event for storage; return the bytes and the event decoded back from them.

    msgspec does not type-check a Struct's constructor, so a wrong field type would only
    surface when the row is read back, months later. Decoding the bytes we are about to
    store catches it at append time, where the caller can still fix it, and the decoded copy
    is exactly what a later read returns (and shares nothing mutable with the caller's).
    """
    decoder = _decoders_by_type.get(type(event)) or _decoders[kind_of(event)]  # kind_of raises for a non-event
    try:
        data = _encoder.encode(event)
        return data, decoder.decode(data)
    except (msgspec.ValidationError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidEventError(f"invalid {type(event).__name__}: {exc}") from exc


def decode(kind: str, schema: int, payload: bytes | str) -> Event:
    """Decode a stored payload of `kind` written at `schema` into the current Struct."""
    try:
        decoder = _decoders[kind]
    except KeyError:
        raise UnknownKindError(f"unknown event kind {kind!r}; known kinds: {', '.join(KINDS)}") from None
    try:
        if schema == CURRENT_SCHEMA[kind]:
            return decoder.decode(payload)
        data = upcast(kind, schema, _generic.decode(payload))
        data["type"] = kind
        return msgspec.convert(data, KINDS[kind])
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InvalidEventError(f"cannot decode {kind} (schema {schema}): {exc}") from exc


def from_dict(kind: str, data: dict[str, Any]) -> Event:
    """Build a current event of `kind` from plain data (CLI, importers), validating every field."""
    if kind not in KINDS:
        raise UnknownKindError(f"unknown event kind {kind!r}; known kinds: {', '.join(KINDS)}")
    try:
        return msgspec.convert({**data, "type": kind}, KINDS[kind])
    except msgspec.ValidationError as exc:
        raise InvalidEventError(f"invalid {kind}: {exc}") from exc


def to_builtins(event: Event) -> dict[str, Any]:
    """The event as plain JSON-ready data, tag included."""
    return msgspec.to_builtins(event)

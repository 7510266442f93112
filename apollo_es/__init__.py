"""apollo-es: asynchronous human-agent rollouts on an event-sourced trajectory store."""

from typing import TYPE_CHECKING, Any

from apollo_es.errors import (
    ApolloError,
    ConcurrencyError,
    DuplicateEventError,
    InvalidEventError,
    InvalidStreamIdError,
    PayloadTooLarge,
    StoreBusyError,
    StoreError,
    StreamExistsError,
    StreamNotFound,
    VersionOutOfRange,
)

if TYPE_CHECKING:
    from apollo_es.store import ANY, NO_STREAM, EventStore, NewEvent, RecordedEvent, StreamInfo, VerifyReport, open_store

# The store's names load on first use: `train/` imports `apollo_es.errors`, and a GPU machine
# that only trains needs neither the store nor msgspec.
_FROM_STORE = {"ANY", "NO_STREAM", "EventStore", "NewEvent", "RecordedEvent", "StreamInfo", "VerifyReport", "open_store"}


def __getattr__(name: str) -> Any:
    if name in _FROM_STORE:
        from apollo_es import store

        return getattr(store, name)
    raise AttributeError(f"module 'apollo_es' has no attribute {name!r}")


__all__ = [
    "ANY",
    "NO_STREAM",
    "ApolloError",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventStore",
    "InvalidEventError",
    "InvalidStreamIdError",
    "NewEvent",
    "PayloadTooLarge",
    "RecordedEvent",
    "StoreBusyError",
    "StoreError",
    "StreamExistsError",
    "StreamInfo",
    "StreamNotFound",
    "VerifyReport",
    "VersionOutOfRange",
    "open_store",
]

"""apollo-es: asynchronous human-agent rollouts on an event-sourced trajectory store."""

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
from apollo_es.store import ANY, NO_STREAM, EventStore, NewEvent, RecordedEvent, StreamInfo, VerifyReport, open_store

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

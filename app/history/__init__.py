"""Conversations kept on the server: ``Store.open(DATABASE_URL)``."""

from .content import Blob
from .records import (
    Conversation,
    HistoryError,
    InvalidInput,
    Message,
    NotFound,
    Page,
    StoreError,
)
from .store import Store, new_id

__all__ = [
    "Blob",
    "Conversation",
    "HistoryError",
    "InvalidInput",
    "Message",
    "NotFound",
    "Page",
    "Store",
    "StoreError",
    "new_id",
]

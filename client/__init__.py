"""Python client for the chatstream relay.

from client import ChatClient

with ChatClient("http://127.0.0.1:5000") as chat:
    for text in chat.stream("Hello"):
        print(text, end="", flush=True)
    for kind, text in chat.stream("Why?", reasoning=True):  # "reasoning", "answer", …
        print(text, end="", flush=True)
"""

from client.answer import Delta, ToolCallRef
from client.chat import DEFAULT_URL, ChatClient
from client.errors import ChatConnectionError, ChatError
from client.images import MAX_IMAGE_BYTES

__all__ = [
    "DEFAULT_URL",
    "MAX_IMAGE_BYTES",
    "ChatClient",
    "ChatConnectionError",
    "ChatError",
    "Delta",
    "ToolCallRef",
]

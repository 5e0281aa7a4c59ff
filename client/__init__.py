"""Python client for the chatstream relay.

from client import ChatClient

with ChatClient("http://127.0.0.1:5000") as chat:
    for text in chat.stream("Hello"):
        print(text, end="", flush=True)
"""

from client.chat import DEFAULT_URL, ChatClient, ChatConnectionError, ChatError

__all__ = ["DEFAULT_URL", "ChatClient", "ChatConnectionError", "ChatError"]

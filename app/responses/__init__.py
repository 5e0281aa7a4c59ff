"""OpenAI's Responses API, a transport of its own over the relay's core: the
request translated for a Chat Completions upstream (``request``), the relay's
events as Responses events (``events``), responses found by id on any node
(``ids``), and the routes (``api``)."""

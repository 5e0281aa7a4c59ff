"""Reference relays built the way people commonly build one, one file each.

Each serves the same upstream as the relay (``OPENAI_BASE_URL``), or with
``DEMO_TOKENS_PER_SECOND`` set a trivial server-side paced source of words
(``w0 w1 …``, after ``DEMO_TTFT`` seconds), so capacity is compared at equal load.
"""

"""A moderation callable for the relay's ``MODERATION=module:function`` tests:
``MODERATION=tests.moderation_judge:judge``."""

import time


def judge(text: str) -> list[str]:
    """Flag "grimthorpe" as violence; take a moment, as a local classifier does (it
    blocks its thread, which the relay runs off its event loop)."""
    time.sleep(0.01)
    if "explodingjudge" in text:
        raise RuntimeError("the classifier failed")
    return ["violence"] if "grimthorpe" in text.lower() else []

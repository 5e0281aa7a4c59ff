"""Who is connecting: authentication from the Socket.IO ``auth`` payload, and the
identity that per-user limits are counted against.

With ``AUTH_TOKENS`` (static bearer tokens) or ``AUTH_SECRET`` (signed, expiring tokens
minted with ``python -m app.auth mint NAME``) a client must send ``{token}`` in its
``auth`` payload. Without either, anyone may connect and limits apply per client
address.
"""

import argparse
import hashlib
import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from itsdangerous import URLSafeSerializer

log = logging.getLogger(__name__)

_SALT = "chatstream-auth"


class Unauthorized(Exception):
    """A connection that is refused, with the reason the client is given."""


@dataclass(frozen=True)
class Identity:
    """Who a connection is, and until when its token is valid."""

    name: str
    # Unix time after which a signed token is expired; None for one that does not.
    expires: float | None = None

    def expired(self) -> bool:
        return self.expires is not None and time.time() > self.expires


def mint_token(secret: str, subject: str, ttl_seconds: float) -> str:
    """A signed token naming ``subject``, valid for ``ttl_seconds``."""
    serializer = URLSafeSerializer(secret, salt=_SALT)
    return serializer.dumps({"sub": subject, "exp": int(time.time() + ttl_seconds)})


def _utf8(text: str) -> bytes | None:
    """``text`` as UTF-8, or None for text that has none (a lone surrogate)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


def _check_signed(secret: str, token: str) -> Identity:
    if not token.isascii():
        # The tokens it signs are ASCII, and itsdangerous skips other characters in
        # a signature: the token with them added would pass as the one without.
        raise Unauthorized("the token is not valid")
    try:
        claims = URLSafeSerializer(secret, salt=_SALT).loads(token)
    except Exception as exc:
        # BadSignature, and whatever else a malformed token makes itsdangerous raise
        # (UnicodeEncodeError for a lone surrogate): each is a wrong token.
        log.debug("signed token refused: %s", type(exc).__name__)
        raise Unauthorized("the token is not valid") from None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    if not isinstance(subject, str) or _utf8(subject) is None:
        raise Unauthorized("the token is not valid")
    expires = claims.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise Unauthorized("the token is not valid")
    identity = Identity(f"user:{subject}", expires)
    if identity.expired():
        raise Unauthorized("the token has expired")
    return identity


def _check_static(tokens: list[str], token: str) -> Identity | None:
    encoded = _utf8(token)
    if encoded is None:
        return None  # no configured token has a lone surrogate
    # Compared as digests of equal length, against every token, so that the time
    # taken says nothing about which one, or how much of it, matched.
    digest = hashlib.sha256(encoded).digest()
    matched = False
    for known in tokens:
        # An environment variable's undecodable bytes come as surrogates: kept as
        # bytes, they match nothing a client can send.
        known_digest = hashlib.sha256(known.encode("utf-8", "surrogateescape")).digest()
        matched |= hmac.compare_digest(known_digest, digest)
    if not matched:
        return None
    # Name the identity by a digest so that logs never show the token.
    return Identity("token:" + digest.hex()[:12])


def client_address(environ: Mapping[str, Any], trusted_proxies: list[str]) -> str:
    """The client's address; X-Forwarded-For counts only from a trusted proxy."""
    remote = environ.get("REMOTE_ADDR") or "unknown"
    networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not networks or not trusted(remote):
        return remote
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    # Walk back from the nearest hop: the first one not ours is the client.
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else remote


def authenticate(
    auth: Any, environ: Mapping[str, Any], config: Mapping[str, Any]
) -> Identity:
    """The identity of a new connection, or ``Unauthorized``.

    Whatever the token is (any JSON value, any text), checking it raises nothing
    else: a token that cannot be read is a wrong token."""
    tokens: list[str] = config["AUTH_TOKENS"]
    secret: str = config["AUTH_SECRET"]
    if not tokens and not secret:
        return Identity("addr:" + client_address(environ, config["TRUSTED_PROXIES"]))
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthorized("this server requires a token in the auth payload")
    identity = _check_static(tokens, token)
    if identity is not None:
        return identity
    if secret:
        return _check_signed(secret, token)
    raise Unauthorized("the token is not valid")


def identify(auth: Any, environ: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The name of a new connection's identity, or ``Unauthorized``."""
    return authenticate(auth, environ, config).name


def may_resume(identity: str, owner: str) -> bool:
    """Whether ``identity`` may pick up a stream that ``owner`` started."""
    # An anonymous client's address may change between connections (a phone moving
    # networks); the token alone decides. An authenticated one must be the same user.
    return identity.startswith("addr:") or identity == owner


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m app.auth", description="Mint a signed token for AUTH_SECRET."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    mint = sub.add_parser("mint", help="print a token for NAME")
    mint.add_argument("name")
    mint.add_argument("--ttl", type=float, default=86400, help="seconds (1 day)")
    args = parser.parse_args(argv)
    secret = os.environ.get("AUTH_SECRET")
    if not secret:
        parser.error("set AUTH_SECRET to the server's secret")
    print(mint_token(secret, args.name, args.ttl))


if __name__ == "__main__":
    main()

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
import os
import time
from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

_SALT = "chatstream-auth"


class Unauthorized(Exception):
    """A connection that is refused, with the reason the client is given."""


def mint_token(secret: str, subject: str, ttl_seconds: float) -> str:
    """A signed token naming ``subject``, valid for ``ttl_seconds``."""
    serializer = URLSafeSerializer(secret, salt=_SALT)
    return serializer.dumps({"sub": subject, "exp": int(time.time() + ttl_seconds)})


def _check_signed(secret: str, token: str) -> str:
    try:
        claims = URLSafeSerializer(secret, salt=_SALT).loads(token)
    except BadSignature:
        raise Unauthorized("the token is not valid") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
        raise Unauthorized("the token is not valid")
    if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
        raise Unauthorized("the token has expired")
    return f"user:{claims['sub']}"


def _check_static(tokens: list[str], token: str) -> str | None:
    for known in tokens:
        if hmac.compare_digest(known.encode(), token.encode()):
            # Name the identity by a digest so that logs never show the token.
            return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]
    return None


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


def identify(auth: Any, environ: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The identity of a new connection, or ``Unauthorized``."""
    tokens: list[str] = config["AUTH_TOKENS"]
    secret: str = config["AUTH_SECRET"]
    if not tokens and not secret:
        return "addr:" + client_address(environ, config["TRUSTED_PROXIES"])
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthorized("this server requires a token in the auth payload")
    identity = _check_static(tokens, token)
    if identity is not None:
        return identity
    if secret:
        return _check_signed(secret, token)
    raise Unauthorized("the token is not valid")


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

"""Who may open the page: the listen address, TLS, the token and the browser's own checks.

Loopback by default. Any other address carries patient video onto the hospital network, so
it needs TLS (--tls-cert/--tls-key) and a token (--token or ORSTREAM_WEB_TOKEN), or the
explicit --insecure, which is then logged as a warning, as `security.allow_insecure` is for
ZeroMQ (pipeline/security.py).

Even on loopback a browser is an untrusted client: any web site the user has open can make
it send requests to 127.0.0.1. Two checks close that (they cost nothing to a real page):
- the Host header must name this server (a loopback name, or the address listened on), so
  a site whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) is refused;
- requests that read frames or act (the WebSocket, POST) must come from this page's own
  origin when a browser says where it comes from (the Origin header), so another site
  cannot open the stream (cross-site WebSocket hijacking) or ask questions in its name.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from loguru import logger

from orstream.common.errors import UsageError

TOKEN_ENV = "ORSTREAM_WEB_TOKEN"
LOOPBACK_NAMES = ("localhost",)


class WebAccessError(UsageError):
    """A listen address, certificate or token setting that cannot be served as asked."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def url(self, tls: bool) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}/"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """`HOST:PORT` (IPv6 as `[::1]:8080`) -> Listen; a missing host is refused rather than
    read as every interface."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise WebAccessError(f"--listen {text}: expected HOST:PORT, e.g. 127.0.0.1:8080 "
                             f"(0.0.0.0:8080 for every interface, with TLS and a token)")
    return Listen(host, int(port))


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(listen: Listen, tls: bool, token: str | None, insecure: bool) -> None:
    """Refuse a non-loopback address without TLS and a token, unless `insecure`."""
    if listen.loopback:
        return
    missing = [what for what, ok in (("TLS (--tls-cert and --tls-key)", tls),
                                     (f"a token (--token or {TOKEN_ENV})", bool(token)))
               if not ok]
    if not missing:
        return
    if not insecure:
        raise WebAccessError(f"--listen {listen} is not loopback: serving the video to the "
                             f"network needs {' and '.join(missing)}; or --insecure to serve "
                             f"it without (anyone on that network could watch)")
    logger.warning("web: {} is open to other machines WITHOUT {} (--insecure): anyone on "
                   "that network can watch the video", listen, " or ".join(missing))


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server's TLS context from PEM files; None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise WebAccessError("TLS needs both --tls-cert (PEM certificate chain) and "
                             "--tls-key (its PEM private key)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise WebAccessError(f"--tls-cert {cert} / --tls-key {key}: cannot load them: "
                             f"{exc}") from None
    return context


@dataclass(frozen=True)
class Gate:
    """The per-request checks (aiohttp-free, so they read as rules)."""

    listen: Listen
    token: str | None

    def token_ok(self, given: str | None) -> bool:
        if not self.token:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def host_ok(self, host_header: str | None) -> bool:
        """The Host header names this server. On loopback without a token only a loopback
        name or the address listened on is accepted (no DNS rebinding); elsewhere the
        token is the guard (a server on 0.0.0.0 is reached under names it cannot know), or
        --insecure said that anyone may watch."""
        if self.token or not self.listen.loopback:
            return True
        if not host_header:
            return False
        host = urlsplit(f"//{host_header}").hostname or ""
        return is_loopback(host) or host == self.listen.host.lower()

    @staticmethod
    def origin_ok(origin: str | None, host_header: str | None) -> bool:
        """No Origin (not a browser, or a same-origin GET) or this server's own origin."""
        if origin is None:
            return True
        return bool(host_header) and urlsplit(origin).netloc.lower() == host_header.lower()

"""CurveZMQ for tcp sockets: key pairs, the server and client roles, and who may connect.

A process has one key pair. Where it binds a tcp socket it is the CurveZMQ server and a ZAP
authenticator admits only the public keys found in `allowed_clients`; a client whose key is
not there completes no handshake and receives nothing. Where it connects it is the client
and must know the server's public key. ipc and inproc stay as they are: they never leave the
host, and file permissions guard ipc.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from loguru import logger
from zmq.auth.thread import ThreadAuthenticator

from orstream.common.errors import UsageError


class SecurityError(UsageError):
    """Keys missing or unreadable; the message names the config key or file."""


@dataclass(frozen=True)
class Curve:
    public: bytes  # this process's key pair (Z85)
    secret: bytes
    server_public: bytes | None = None  # the server this process connects to
    allowed_clients: Path | None = None  # public keys allowed to connect where it binds

    def apply(self, socket: zmq.Socket, endpoint: str, bind: bool) -> None:
        """Make `socket` a CurveZMQ server (bind) or client (connect); tcp only."""
        if not endpoint.startswith("tcp://"):
            return
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        if bind:
            if self.allowed_clients is None:
                raise SecurityError(f"binding {endpoint} with curve needs "
                                    f"security.allowed_clients: a folder of the public keys "
                                    f"(NAME.key) allowed to connect")
            _authenticator(socket.context, self.allowed_clients)
            socket.curve_server = True
        else:
            if self.server_public is None:
                raise SecurityError(f"connecting to {endpoint} with curve needs "
                                    f"security.server_public_key: the NAME.key of the process "
                                    f"that binds it")
            socket.curve_serverkey = self.server_public


def make_keys(folder: Path | str, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public: give it to peers) and NAME.key_secret (keep it) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (folder / f"{name}{suffix}").exists():
            raise SecurityError(f"{folder / (name + suffix)} already exists: pick another "
                                f"name or remove it (peers that trust it would lose access)")
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _exists(path: Path | str, what: str) -> None:
    # pyzmq calls a missing file an "Invalid certificate file": say what is wrong instead.
    if not Path(path).is_file():
        raise SecurityError(f"{what}: {path} does not exist (`orstream keys DIR NAME` makes "
                            f"NAME.key and NAME.key_secret)")


def read_public(path: Path | str, what: str) -> bytes:
    _exists(path, what)
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{what}: cannot read a key from {path}: {exc}") from None
    return public


def read_pair(path: Path | str, what: str) -> tuple[bytes, bytes]:
    _exists(path, what)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"{what}: cannot read a key from {path}: {exc}") from None
    if secret is None:
        raise SecurityError(f"{what}: {path} holds only a public key; give the "
                            f"NAME.key_secret file")
    return public, secret


def curve_from_files(key: Path | str, server_public_key: Path | str | None = None,
                     allowed_clients: Path | str | None = None,
                     names: tuple[str, str] = ("security.key", "security.server_public_key")
                     ) -> Curve:
    """`names`: what the user called the two files (config keys, or a client's flags)."""
    public, secret = read_pair(key, names[0])
    server = read_public(server_public_key, names[1]) if server_public_key else None
    return Curve(public, secret, server, Path(allowed_clients) if allowed_clients else None)


_AUTH_LOCK = threading.Lock()
_AUTHENTICATORS: dict[int, tuple[ThreadAuthenticator, Path]] = {}


def _authenticator(ctx: zmq.Context, allowed: Path) -> None:
    """One ZAP handler per context (ZeroMQ allows one), started on first use."""
    with _AUTH_LOCK:
        current = _AUTHENTICATORS.get(id(ctx))
        if current is not None:
            if current[1] != allowed:
                raise SecurityError(f"security.allowed_clients: this process already admits "
                                    f"keys from {current[1]}, not also {allowed}")
            return
        keys = sorted(allowed.glob("*.key"))
        if not keys:
            raise SecurityError(f"security.allowed_clients: {allowed} holds no public keys "
                                f"(NAME.key): nobody could connect")
        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=str(allowed))
        _AUTHENTICATORS[id(ctx)] = (auth, allowed)
        logger.info("curve: admitting {} client key(s) from {}", len(keys), allowed)


def stop_authenticators() -> None:
    """Stop the ZAP threads (tests, and processes that tear their context down)."""
    with _AUTH_LOCK:
        for auth, _ in _AUTHENTICATORS.values():
            auth.stop()
        _AUTHENTICATORS.clear()

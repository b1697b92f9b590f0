"""A real `tritonserver` process on this host, from the nvidia-pytriton wheel, without Docker.

The wheel (`pip install --no-deps nvidia-pytriton==0.7.0`: a plain install downgrades numpy
to 1.x) ships Triton 2.51's server binary, its libraries and the Python backend; pytriton's
Python API is not used. `orstream serve --triton`, the tests and benchmarks/triton.py start
the server through `TritonServer`, which does what the spike found the binary needs
(benchmarks/reports/2026-12-06-xeon-amx-2core/triton-spike/FINDINGS.md):
- a backend folder whose python/ holds the stub for this interpreter (the wheel keeps the
  stubs apart, and Triton finds none otherwise);
- LD_LIBRARY_PATH with this interpreter's libpython and the wheel's libraries, and this
  environment's bin/ first on PATH, so the stub's embedded (isolated) Python finds this
  environment's site-packages: the model runs with orstream's own onnxruntime and numpy;
- every address on loopback unless asked, free or given ports, and a shm prefix of its own;
- `--disable-auto-complete-config`: ready in 0.2-0.7 s instead of 1.5-2 s;
- after a crash, the process group killed and its /dev/shm regions unlinked: the stub
  outlives a kill -9 of the server (reparented, SIGTERM ignored, its model still loaded).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from orstream.common.errors import OrstreamError, UsageError

WHEEL = "nvidia-pytriton==0.7.0"
INSTALL = f"pip install --no-deps {WHEEL}"



def _reachable(address: str) -> str:
    """Where a client on this host reaches a server listening on `address` (every address:
    loopback)."""
    return "127.0.0.1" if address in ("0.0.0.0", "::") else address


class TritonServerError(OrstreamError):
    """The server cannot be found, started or made ready; says why and what to do."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")  # located, not imported (it wants numpy 1)
    if spec is None or not spec.submodule_search_locations:
        raise TritonServerError(f"no tritonserver here: nvidia-pytriton is not installed. "
                                f"Install it with `{INSTALL}` (Linux x86-64 with glibc >= "
                                f"2.35), or run the official Triton container")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass(frozen=True)
class Distribution:
    """Where the wheel keeps the server, its libraries and this Python's backend stub."""

    root: Path  # site-packages/pytriton/tritonserver

    @classmethod
    def find(cls) -> Distribution:
        dist = cls(_package_dir() / "tritonserver")
        for path, what in ((dist.binary, "the tritonserver binary"),
                           (dist.stub, f"a Python-backend stub for Python {_minor()}")):
            if not path.exists():
                raise TritonServerError(f"nvidia-pytriton has no {what} ({path}): reinstall "
                                        f"it with `{INSTALL}` (stubs exist for 3.8-3.13)")
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            raise TritonServerError(f"{sys.executable} has no shared libpython, which Triton's "
                                    f"Python-backend stub links: use a Python built with "
                                    f"--enable-shared (Debian's, pyenv with "
                                    f"PYTHON_CONFIGURE_OPTS=--enable-shared)")
        return dist

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.root / "python_backend_stubs" / _minor() / "triton_python_backend_stub"

    @property
    def libs(self) -> Path:
        return self.root.parents[1] / "nvidia_pytriton.libs"

    def backend_dir(self, work: Path) -> Path:
        """work/backends/python: links to the wheel's Python backend plus this Python's stub
        (Triton 2.51 loads no Python model unless the stub sits in that folder)."""
        python = work / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (*(self.root / "backends" / "python").iterdir(), self.stub):
            link = python / source.name
            if not link.is_symlink():
                link.symlink_to(source)
        return python.parent

    def environment(self) -> dict[str, str]:
        env = os.environ.copy()
        # The stub links libpython by soname: this interpreter's LIBDIR first, or the loader
        # may find the system's libpython of another patch release. The wheel's own libraries
        # are found through RPATH only from its folder, not through our backend links.
        paths = (sysconfig.get_config_var("LIBDIR"), str(self.libs), env.get("LD_LIBRARY_PATH"))
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env


def _minor() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())


STANDARD_PORTS = Ports(8000, 8001, 8002)  # Triton's own defaults


class TritonServer:
    """One tritonserver process serving `repo`. Start, wait until ready, stop; `kill` is a
    crash (for tests), `restart` brings it back on the same ports after cleaning up."""

    def __init__(self, repo: Path, ports: Ports | None = None, address: str = "127.0.0.1",
                 log: Path | None = None, work: Path | None = None,
                 extra_args: tuple[str, ...] = (), tls: tuple[Path, Path] | None = None,
                 insecure: bool = False) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir() or not any(self.repo.glob("*/config.pbtxt")):
            raise UsageError(f"model repository {repo} has no MODEL/config.pbtxt: make one "
                             f"with `orstream export --backend triton --out {repo}`")
        if not _loopback(address) and tls is None and not insecure:
            raise UsageError(f"--address {address} is off this host and no --tls-cert/--tls-key "
                             f"is given: the rooms' video would cross the network in clear. "
                             f"Add them, or --insecure on a closed network")
        self.tls = tls
        self.dist = Distribution.find()
        self.ports = ports or Ports.free()
        self.address = address
        self.work = Path(work) if work else Path(tempfile.mkdtemp(prefix="orstream-triton-"))
        self.log = Path(log) if log else self.work / "tritonserver.log"
        # Python-backend shm regions are named with this prefix: unique per server, so two
        # servers, or what a killed one left, never collide; and `reap` knows what to unlink.
        self.shm_prefix = f"orstream_triton_{os.getpid()}_{self.ports.grpc}_"
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        """host:port of the gRPC endpoint, as segment.triton.url takes it."""
        return f"{_reachable(self.address)}:{self.ports.grpc}"

    @property
    def http_address(self) -> str:
        """Where the HTTP endpoint listens. Triton's HTTP has no TLS: with TLS (gRPC only), it
        stays on loopback, or it would serve patient frames in clear beside the encrypted
        gRPC. Without TLS it goes where gRPC goes (loopback unless --insecure)."""
        return "127.0.0.1" if self.tls is not None else self.address

    @property
    def http_url(self) -> str:
        """host:port of the HTTP endpoint, for segment.triton.protocol: http."""
        return f"{_reachable(self.http_address)}:{self.ports.http}"

    def command(self) -> list[str]:
        p, a = self.ports, self.address
        return [
            str(self.dist.binary), "--model-repository", str(self.repo),
            "--backend-directory", str(self.dist.backend_dir(self.work)),
            "--http-address", self.http_address, "--http-port", str(p.http),
            "--grpc-address", a, "--grpc-port", str(p.grpc),
            "--metrics-address", a, "--metrics-port", str(p.metrics),
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self._tls_args(),
            "--disable-auto-complete-config",
            # no GPU here: skip the pinned and CUDA pools and GPU metrics (start-up noise)
            "--allow-gpu-metrics", "false", "--pinned-memory-pool-byte-size", "0",
            "--cuda-memory-pool-byte-size", "0:0", *self.extra_args]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        cert, key = (str(Path(p).resolve()) for p in self.tls)
        return ["--grpc-use-ssl", "true", "--grpc-server-cert", cert, "--grpc-server-key", key]

    def start(self) -> None:
        """Start the process (it is ready only after `wait_ready`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("tritonserver is already running")
        self._log_file = open(self.log, "ab")  # noqa: SIM115 - held for the process's life
        self.started_at = time.monotonic()
        # Its own session: the server and its stubs form one process group, reaped as one.
        self.proc = subprocess.Popen(self.command(), env=self.dist.environment(),
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logger.info("tritonserver pid {}: gRPC {}, model repository {}", self.proc.pid,
                    self.url, self.repo)

    def ready(self) -> bool:
        """Live and every model in the repository loaded (Triton's strict readiness)."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready",
                                        timeout=0.5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds from start to ready; TritonServerError with the log's last lines when
        the process exits or is not ready in time."""
        assert self.proc is not None, "wait_ready before start"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonServerError(f"tritonserver exited with {self.proc.returncode} "
                                        f"before it was ready:\n{self.log_tail()}")
            if self.ready():
                seconds = time.monotonic() - self.started_at
                logger.info("tritonserver ready in {:.2f} s", seconds)
                return seconds
            time.sleep(0.05)
        raise TritonServerError(f"tritonserver not ready after {timeout_s:.0f} s "
                                f"(log {self.log}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log})"
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        """SIGKILL the server alone, as a crash would (its stub lives on: see `reap`)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def reap(self) -> None:
        """Kill whatever is left of the process group (stubs hold models and shm after the
        server died) and unlink the group's /dev/shm regions."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for path in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            path.unlink(missing_ok=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def restart(self, timeout_s: float = 60.0) -> float:
        """Clean up after a dead (or live) server and start it again on the same ports."""
        self.stop()
        self.start()
        return self.wait_ready(timeout_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (Triton unloads its models and exits), then clean up the group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver ignored SIGTERM for {:.0f} s: killing it", grace_s)
        self.reap()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


def serve(repo: Path, ports: Ports, address: str = "127.0.0.1",
          stop: Callable[[], bool] | None = None, restart_delay_s: float = 1.0,
          tls: tuple[Path, Path] | None = None, insecure: bool = False) -> int:
    """`orstream serve --triton`: run the server until `stop()` is true (Ctrl-C), restarting
    it when it dies, so that the rooms' pipelines (which reconnect on their own) resume."""
    server = TritonServer(repo, ports, address, tls=tls, insecure=insecure)
    server.start()
    try:
        server.wait_ready()
        print(f"Triton serving {repo} on {server.url} (gRPC; HTTP {ports.http}, metrics "
              f"{ports.metrics}). Rooms: orstream run --set segment.backend=triton --set "
              f"segment.triton.url={server.url}", flush=True)
        if tls is None:  # Triton's HTTP endpoint has no TLS: only plain servers offer it
            print(f"Rooms on this host, the shortest call (frames in shared memory over "
                  f"HTTP): --set segment.triton.protocol=http --set "
                  f"segment.triton.url={server.http_url}", flush=True)
        restarts = 0
        while stop is None or not stop():
            code = server.proc.poll() if server.proc is not None else None
            if code is not None:
                restarts += 1
                logger.error("tritonserver exited with {} (restart {}): log tail:\n{}", code,
                             restarts, server.log_tail(6))
                time.sleep(restart_delay_s)
                server.restart()
            time.sleep(0.2)
        return 0
    finally:
        server.stop()


__all__ = ["INSTALL", "STANDARD_PORTS", "Distribution", "Ports", "TritonServer",
           "TritonServerError", "free_port", "serve"]

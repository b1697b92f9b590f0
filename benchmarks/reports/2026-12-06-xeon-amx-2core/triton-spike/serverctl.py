"""Start the tritonserver binary shipped in the nvidia-pytriton wheel directly (no pytriton API),
on loopback and free ports, with a model repository we write. Run with /tmp/tritonvenv/bin/python.

    python serverctl.py REPO_DIR [seconds]   # start, wait for ready, print timings, stop
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytriton

TRITON_DIST = Path(pytriton.__file__).parent / "tritonserver"
BINARY = TRITON_DIST / "bin" / "tritonserver"
BACKENDS = TRITON_DIST / "backends"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
STUB = TRITON_DIST / "python_backend_stubs" / PY / "triton_python_backend_stub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_dir(work: Path) -> Path:
    """The wheel's backends/python has no stub (one per Python version lives in
    python_backend_stubs/), and Triton 2.51 refuses to load a Python model unless
    <backend-directory>/python/triton_python_backend_stub exists (a stub in the model directory
    alone fails; with both, the model-directory one is run). So build our own backend directory:
    symlinks into the wheel plus the stub for this interpreter (pytriton copies the tree)."""
    py = work / "backends" / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (*(BACKENDS / "python").iterdir(), STUB):
        dst = py / src.name
        if not dst.exists():
            dst.symlink_to(src)
    return work / "backends"


def server_env() -> dict:
    env = os.environ.copy()
    # libtriton_python.so finds the wheel's bundled libs through RPATH $ORIGIN/../../../..; loaded
    # through our symlink, $ORIGIN is the symlink's folder, so name the libs folder explicitly.
    libs = TRITON_DIST.parents[1] / "nvidia_pytriton.libs"
    # The stub links libpython3.X.so.1.0 by soname: put this interpreter's (pyenv) lib dir first,
    # else the loader finds Debian's /usr/lib libpython3.11 (3.11.2) with /usr's sys.path.
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = (libdir, str(libs), env.get("LD_LIBRARY_PATH"))
    env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
    # The stub's embedded interpreter runs isolated (sys.flags.ignore_environment=1: PYTHONPATH
    # is ignored) and finds its prefix by searching PATH for `python3`: put this venv's bin first
    # so it reads pyvenv.cfg and gets the venv's site-packages (pytriton does the same).
    # STUB_ENV_BIN: run models in another venv's interpreter (same Python minor version).
    stub_bin = os.environ.get("STUB_ENV_BIN", str(Path(sys.executable).parent))
    env["PATH"] = f"{stub_bin}:{env['PATH']}"
    return env


class Server:
    def __init__(self, repo: Path, log: Path, ports: tuple[int, int, int] | None = None,
                 extra: list[str] | None = None, prefix: str | None = None,
                 work: Path | None = None) -> None:
        self.repo = Path(repo)
        self.http, self.grpc, self.metrics = ports or (free_port(), free_port(), free_port())
        self.log = Path(log)
        self.prefix = prefix or f"orstream{os.getpid()}_{self.grpc}_"
        self.args = [
            str(BINARY), "--model-repository", str(self.repo),
            "--backend-directory", str(backend_dir(Path(work or self.repo.parent / "triton_work"))),
            "--http-address", "127.0.0.1", "--http-port", str(self.http),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics),
            # unique shm names per server: two servers (or a leftover of a killed one) never clash
            f"--backend-config=python,shm-region-prefix-name={self.prefix}",
            "--log-info", "true", *(extra or [])]
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        self.t_start = time.perf_counter()
        self._logf = open(self.log, "ab")  # noqa: SIM115 - held for the server's life
        self.proc = subprocess.Popen(self.args, env=server_env(), stdout=self._logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self.t_start

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready",
                                        timeout=0.5) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120.0) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited {self.proc.returncode}; see {self.log}")
            if self.ready():
                return time.perf_counter() - self.t_start
            time.sleep(0.05)
        raise TimeoutError(f"tritonserver not ready in {timeout} s; see {self.log}")

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def reap_group(self) -> None:
        """After the server died (kill -9, OOM), its Python-backend stub lives on, reparented to
        init, holding its model and /dev/shm region (measured: still there after 67 s, SIGTERM
        ignored). It stays in the server's process group (start_new_session=True makes the
        server the group leader), so SIGKILL the group, then unlink the stub's shm regions."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for path in Path("/dev/shm").glob(f"{self.prefix}*"):
            path.unlink(missing_ok=True)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_logf", None):
            self._logf.close()


if __name__ == "__main__":
    repo = Path(sys.argv[1])
    s = Server(repo, Path("server_start.log"))
    print("cmd:", " ".join(s.args))
    s.start()
    print(f"ready after {s.wait_ready():.2f} s (http {s.http} grpc {s.grpc} metrics {s.metrics})")
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    s.stop()
    print("stopped rc", s.proc.returncode)

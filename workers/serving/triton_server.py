"""Start the real ``tritonserver`` shipped in the nvidia-pytriton wheel, on loopback, for one process's lifetime.

The wheel's server needs three things to run a Python-backend model (see docs ENVIRONMENT.md): a copy of
``backends/python`` with the stub for the running Python copied in, ``--backend-directory`` at that copy,
and ``nvidia_pytriton.libs`` on ``LD_LIBRARY_PATH``. On top of that the stub (which embeds libpython) is
pointed at this interpreter's libpython and venv (via PATH) so ``model.py`` imports the same torch.

The server runs in its own session / process group and the whole group is killed on stop, so the
backend stub processes go with it; stop runs on ``__exit__``, atexit, SIGINT/SIGTERM and start errors.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from emoframe.workers.spec.contract import MODEL_NAME
from emoframe.workers.spec.errors import ServiceUnavailableError
from emoframe.workers.processes.lifeline import SHM_PREFIX, TRITON_WORKDIR_PREFIX, group_guarded, stop_group
from emoframe.workers.processes.ports import free_ports

HOST = "127.0.0.1"
_STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
_LOG_TAIL_LINES = 30
_PORT_ATTEMPTS = 3


def _pytriton_root() -> Path:
    # Found, not imported: only the binary is used, and importing pytriton pulls in its own client stack
    # (pyzmq, gevent, ...), whose absence would read as "not installed".
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nvidia-pytriton is not installed, so there is no embedded tritonserver: "
            "this is a worker install: `pip install 'emoframe[full]'`, or point emoframe at a running Triton with "
            "--triton-url")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def tritonserver_path() -> Path:
    """The tritonserver binary inside the nvidia-pytriton wheel (FileNotFoundError with a hint if absent)."""
    path = _pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall nvidia-pytriton==0.7.0")
    return path


def _stub_path() -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = _pytriton_root() / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not path.is_file():
        raise FileNotFoundError(f"nvidia-pytriton has no Python backend stub for Python {version} ({path})")
    return path


def _prepend(env: dict[str, str], key: str, paths: Sequence[str]) -> None:
    parts = [p for p in paths if p] + [p for p in env.get(key, "").split(os.pathsep) if p]
    env[key] = os.pathsep.join(dict.fromkeys(parts))  # de-duplicated, order kept


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [str(_pytriton_root().parent / "nvidia_pytriton.libs")]
    # The stub links libpython3.X.so: prefer the one this interpreter was built with, so the stub's
    # stdlib and extension ABI match the site-packages below (the system libpython may be another patch release).
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlib = sysconfig.get_config_var("INSTSONAME") or ""
    if libdir and ldlib and (Path(libdir) / ldlib).exists():
        libs.insert(0, libdir)
    _prepend(env, "LD_LIBRARY_PATH", libs)
    # The stub's embedded interpreter ignores PYTHONPATH; it locates its prefix by finding `python3` on
    # PATH (and that venv's pyvenv.cfg), so our interpreter's bin dir first = our site-packages (torch).
    _prepend(env, "PATH", [str(Path(sys.executable).parent)])
    return env


def _tail(path: Path, n: int = _LOG_TAIL_LINES) -> str:
    """Last n log lines, without the ASCII tables (model/option listings) that would crowd out the error."""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque((line for line in f if not line.startswith(("+", "|"))), maxlen=n))
    except OSError as e:
        return f"(no log: {e})"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never via http_proxy


class EmbeddedTriton:
    """``with EmbeddedTriton(model_repo) as srv: TritonClient(srv.grpc_url) ...``

    Serves ``model_names`` (default: the contract's model) from ``model_repo`` on free loopback ports.
    The server log (stdout/stderr of the server and of model.py) goes to ``log_path`` or a temp file and
    is kept after stop.
    """

    def __init__(
        self,
        model_repo: Path,
        log_path: Path | None = None,
        ready_timeout_s: float = 180,
        *,
        model_names: Sequence[str] = (MODEL_NAME,),
        log_verbose: int = 0,
        ports: tuple[int, int] | None = None,
        stop_on_signals: bool = True,
        server_id: str | None = None,
        host: str = HOST,
    ):
        self.model_repo = Path(model_repo).resolve()
        self.ready_timeout_s = ready_timeout_s
        self.model_names = tuple(model_names)
        self.log_verbose = log_verbose
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="emoframe-tritonserver-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self._log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._http_port = self._grpc_port = 0
        self._shm_prefix = ""
        self._fixed_ports = ports  # (http, grpc): a restart at the same address, e.g. after a crash
        # False where the caller owns SIGINT/SIGTERM and unwinds to stop() itself (the flow: its Ray tasks must
        # stop before the model they call goes away). SIGKILL is covered either way (die_with_parent).
        self._stop_on_signals = stop_on_signals
        # What the server answers as its name (server metadata): lets a client tell this server from another
        # one that took its port (workers/task/triton_nodes.py checks a video task talks to its own node's).
        self.server_id = server_id
        # The address both ports listen on: loopback for the embedded server, any for `emoframe triton`.
        self.host = host
        self._lock = threading.RLock()  # re-entrant: a signal may arrive while stop() runs on the main thread
        # What signal.signal() gave back for each signal: a handler, SIG_DFL/SIG_IGN, or None (set outside Python).
        self._prev_handlers: dict[int, Callable[[int, FrameType | None], Any] | int | signal.Handlers | None] = {}

    # -- properties -------------------------------------------------------------------------------
    @property
    def _local_host(self) -> str:
        """Where this machine reaches the server: a wildcard bind is reached on loopback."""
        return HOST if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self._local_host}:{self._grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self._local_host}:{self._http_port}"

    @property
    def ports(self) -> tuple[int, int]:
        """(http, grpc) the server listens on."""
        return self._http_port, self._grpc_port

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> EmbeddedTriton:
        if self._proc is not None:
            raise RuntimeError("EmbeddedTriton already started")
        if not self.model_repo.is_dir():
            raise FileNotFoundError(f"model repository {self.model_repo} does not exist")
        binary = tritonserver_path()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._install_stop_hooks()
        try:
            backends = self._prepare_backends(binary)
            for attempt in range(_PORT_ATTEMPTS):
                log_start = self._log_path.stat().st_size if self._log_path.exists() else 0
                self._launch(binary, backends)
                try:
                    self._wait_ready()
                    return self
                except ServiceUnavailableError:
                    # Free ports are picked then released, so another process can take one first: retry.
                    if attempt + 1 == _PORT_ATTEMPTS or self._proc is None or not self._port_taken(log_start):
                        raise
                    stop_group(self._proc, _STOP_GRACE_S)
                    self._proc = None
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def _prepare_backends(self, binary: Path) -> Path:
        """A private copy of the Python backend with the stub for this Python (the wheel ships it apart)."""
        # The pid in the name lets a later run sweep the folder if this one is killed (workers/processes/lifeline.py).
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{TRITON_WORKDIR_PREFIX}{os.getpid()}-"))
        backends = self._workdir / "backends"
        shutil.copytree(
            binary.parent.parent / "backends" / "python", backends / "python",
            ignore=shutil.ignore_patterns("__pycache__")
        )
        stub = backends / "python" / "triton_python_backend_stub"
        shutil.copy2(_stub_path(), stub)
        stub.chmod(0o755)
        return backends

    def _launch(self, binary: Path, backends: Path) -> None:
        self._http_port, self._grpc_port = self._fixed_ports or free_ports(2, HOST)
        self._shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_"
        cmd = [
            str(binary),
            f"--model-repository={self.model_repo}",
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={m}" for m in self.model_names),
            *([f"--id={self.server_id}"] if self.server_id else []),
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--http-address={self.host}",
            f"--http-port={self._http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self._grpc_port}",
            "--allow-metrics=false",  # no third port; the embedded server is not scraped
            "--exit-timeout-secs=5",
            f"--log-verbose={self.log_verbose}",
            # Unique shared-memory names: several embedded servers on one host must not collide in /dev/shm.
            # The pid lets a later run sweep the regions if this one is killed.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]
        with open(self._log_path, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            self._proc = subprocess.Popen(
                # The guard kills the whole group (server and backend stubs) if this process dies unannounced.
                group_guarded(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(),
                cwd=self._workdir,
                start_new_session=True,  # own process group: killpg takes the backend stubs too
            )

    def _port_taken(self, log_start: int) -> bool:
        with open(self._log_path, "rb") as f:
            f.seek(log_start)
            return b"already in use" in f.read()

    def _ready(self, path: str) -> bool:
        """GET on the server's KServe v2 HTTP endpoint: 200 means ready. Plain urllib: the readiness poll needs
        no client library (tritonclient's HTTP client pulls in gevent)."""
        try:
            with _NO_PROXY.open(f"http://{self.http_url}{path}", timeout=2.0) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):  # not listening yet, or 400 while loading
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self._proc is None:  # stop() ran meanwhile (a signal handler that did not raise)
                raise ServiceUnavailableError("tritonserver was stopped while starting")
            code = self._proc.poll()
            if code is not None:
                raise ServiceUnavailableError(
                    f"tritonserver exited with code {code} before it was ready; log {self._log_path}:\n"
                    + _tail(self._log_path)
                )
            if self._ready("/v2/health/ready") and all(self._ready(f"/v2/models/{m}/ready") for m in self.model_names):
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"tritonserver not ready after {self.ready_timeout_s:.0f} s; log {self._log_path}:\n"
                    + _tail(self._log_path)
                )
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        with self._lock:
            if self._proc is not None:
                # Idempotent, so a re-entrant call from a signal handler is harmless.
                stop_group(self._proc, _STOP_GRACE_S)
                self._proc = None
                # A stub killed mid-shutdown leaves its region behind; nothing uses it once the group is gone.
                for region in Path("/dev/shm").glob(f"{self._shm_prefix}*") if self._shm_prefix else ():
                    region.unlink(missing_ok=True)
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            self._remove_stop_hooks()

    # -- stop hooks -------------------------------------------------------------------------------
    def _install_stop_hooks(self) -> None:
        atexit.register(self.stop)
        if not self._stop_on_signals or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; atexit still covers normal exit
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._prev_handlers[sig] = signal.signal(sig, self._on_signal)

    def _remove_stop_hooks(self) -> None:
        atexit.unregister(self.stop)
        for sig, prev in self._prev_handlers.items():
            try:
                if signal.getsignal(sig) == self._on_signal:  # only if nobody chained on top of us
                    signal.signal(sig, prev)
            except ValueError:  # not the main thread
                pass
        self._prev_handlers = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        self.stop()
        if callable(prev):
            prev(signum, frame)  # e.g. Python's default SIGINT handler raises KeyboardInterrupt
        elif prev == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # die the way the signal would have killed us


"""`emoframe triton`: the Triton that `emoframe label` embeds, run on its own in the foreground, for the
users of `--triton-url` (one shared server for several runs, machines or schedules) without Docker."""

from __future__ import annotations

import errno
import socket
import sys
import time
from pathlib import Path


class PortTakenError(ValueError):
    """A requested port already has a listener: the user picks another."""


def check_port_free(host: str, port: int, flag: str) -> None:
    """Binds and releases ``port`` so that a taken one is named with its flag at once, not after Triton has
    started its backends and logged "already in use"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT is not "taken"
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortTakenError(f"{flag} {port}: port {port} on {host} is in use (another Triton?); "
                                     f"stop it or pick another with {flag}") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise PortTakenError(f"--host {host}: not an address of this machine") from None
            raise


def address_for_others(host: str) -> str:
    """What other machines put in --triton-url: this machine's name when the server listens on every
    address, else the address it listens on."""
    return socket.gethostname() if host in ("0.0.0.0", "::") else host


def run_triton(model_repo: Path, host: str, grpc_port: int, http_port: int, log: Path | None) -> int:
    """Serves until Ctrl-C / SIGTERM (which the caller turns into an exception: the ``with`` stops the
    server's whole process group). 0 after a requested stop; 1 when the server exits by itself."""
    from emoframe.workers.spec.contract import MODEL_NAME
    from emoframe.workers.inference.triton_client import TritonClient
    from emoframe.workers.serving.triton_server import EmbeddedTriton

    server = EmbeddedTriton(model_repo, log_path=log, ports=(http_port, grpc_port), host=host,
                            stop_on_signals=False)
    with server:
        with TritonClient(server.grpc_url) as client:
            version = client.served_version()
        url = f"{address_for_others(host)}:{grpc_port}"
        print(f"Triton serves {MODEL_NAME} version {version} from {model_repo}\n"
              f"  gRPC  {host}:{grpc_port}   emoframe label ... --triton-url {url}\n"
              f"  HTTP  {host}:{http_port}   curl http://{address_for_others(host)}:{http_port}/v2/health/ready\n"
              f"  log   {server.log_path}\n"
              "Ctrl-C stops it.", flush=True)
        while server.running:
            time.sleep(0.5)
        print(f"emoframe triton: tritonserver exited by itself; see its log {server.log_path}", file=sys.stderr)
        return 1

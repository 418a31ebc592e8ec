"""gRPC client for the served ``expression_fusion`` model, checked against the contract.

``check_ready()`` refuses a server whose model carries a different contract fingerprint; ``infer`` validates
batches against the contract before sending; ``infer_many`` keeps several requests in flight (Triton's
dynamic batcher merges them) and yields results in input order. Transient gRPC failures are retried with
exponential backoff, then surface as ``ServiceUnavailableError``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from emoframe.workers.spec.contract import (
    MAX_BATCH_SIZE,
    MODEL_NAME,
    PREPROCESSING,
    Preprocessing,
    fingerprint,
    input_specs,
    output_specs,
)
from emoframe.workers.spec.errors import ContractMismatchError, EmoframeError, ServiceUnavailableError
from emoframe.workers.spec.retries import TRITON_BACKOFF_S, TRITON_REQUEST_RETRIES, TRITON_TRANSIENT_STATUSES

_TRANSIENT = frozenset(f"StatusCode.{s}" for s in TRITON_TRANSIENT_STATUSES)  # str(e.status()) reads so


WAIT_TICK_S = 10.0  # heartbeats while an answer is awaited (infer_many's on_wait)

class InferenceFailedError(EmoframeError):
    """The server answered but refused or failed the request (e.g. the model raised); retrying will not help."""


def _is_transient(e: InferenceServerException) -> bool:
    return str(e.status()) in _TRANSIENT


class TritonClient:
    def __init__(
        self,
        url: str,
        model_name: str = MODEL_NAME,
        max_in_flight: int = 4,
        timeout_s: float = 60,
        retries: int = TRITON_REQUEST_RETRIES,
        backoff_s: float = TRITON_BACKOFF_S,
        *,
        p: Preprocessing = PREPROCESSING,
    ):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.url = url.removeprefix("grpc://")  # tritonclient.grpc wants host:port
        self.model_name = model_name
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.fingerprint = fingerprint(p)
        self.inputs = input_specs(p)
        self.outputs = output_specs(p)
        self._client = grpcclient.InferenceServerClient(self.url)  # thread-safe for unary calls

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- readiness and contract -------------------------------------------------------------------
    def _unavailable(self, why: str) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            f"Triton at {self.url}: {why}. Is Triton running at {self.url} with model {self.model_name!r} loaded? "
            "Start one, or omit --triton-url to use the embedded server."
        )

    def check_ready(self) -> None:
        """Server live and ready, model ready, and the model's contract fingerprint equals ours."""
        # Short deadline: a wrong URL should fail fast, not after the inference timeout.
        t = min(self.timeout_s, 10.0)
        try:
            if not self._client.is_server_live(client_timeout=t):
                raise self._unavailable("server is not live")
            if not self._client.is_server_ready(client_timeout=t):
                raise self._unavailable("server is not ready")
            if not self._client.is_model_ready(self.model_name, client_timeout=t):
                raise self._unavailable(f"model {self.model_name!r} is not ready")
        except InferenceServerException as e:
            raise self._unavailable(e.message() or str(e)) from e
        served = self._config_parameters().get("contract_fingerprint")
        if served != self.fingerprint:
            raise ContractMismatchError(
                f"model {self.model_name!r} at {self.url} serves contract fingerprint {served!r}, this client "
                f"prepares inputs for {self.fingerprint!r} (workers/spec/contract.py); "
                "re-export the model or update emoframe"
            )

    def _config_parameters(self) -> dict[str, str]:
        try:
            cfg = self._client.get_model_config(self.model_name, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise self._unavailable(e.message() or str(e)) from e
        params = cfg.get("config", {}).get("parameters", {})
        return {k: v.get("string_value", "") for k, v in params.items()}

    def server_id(self) -> str:
        """The server's name in its metadata: ``tritonserver --id``, "triton" when not set."""
        t = min(self.timeout_s, 10.0)
        try:
            return self._client.get_server_metadata(as_json=True, client_timeout=t).get("name", "")
        except InferenceServerException as e:
            raise self._unavailable(e.message() or str(e)) from e

    def model_metadata(self) -> dict:
        """The contract dict (classes, preprocessing, tensors) the served model's config carries."""
        raw = self._config_parameters().get("contract")
        if not raw:
            raise ContractMismatchError(f"model {self.model_name!r} at {self.url} carries no contract parameter")
        return json.loads(raw)

    def served_version(self) -> str:
        """The model version Triton serves (the highest ready one): the output partition it is labelled into."""
        try:
            meta = self._client.get_model_metadata(self.model_name, as_json=True, client_timeout=self.timeout_s)
        except InferenceServerException as e:
            raise self._unavailable(e.message() or str(e)) from e
        versions = sorted(meta.get("versions", []), key=lambda v: int(v) if v.isdigit() else -1)
        if not versions:
            raise self._unavailable(f"model {self.model_name!r} reports no ready version")
        return versions[-1]

    # -- inference --------------------------------------------------------------------------------
    def _validate(self, batch: dict[str, np.ndarray]) -> int:
        want = {s.name for s in self.inputs}
        if set(batch) != want:
            raise ValueError(f"batch has inputs {sorted(batch)}, the contract wants {sorted(want)}")
        sizes = set()
        for s in self.inputs:
            a = batch[s.name]
            if not isinstance(a, np.ndarray):
                raise ValueError(f"input {s.name!r} must be a numpy array, got {type(a).__name__}")
            if a.dtype != np.dtype(s.numpy_dtype):
                raise ValueError(f"input {s.name!r} has dtype {a.dtype}, the contract wants {s.numpy_dtype}")
            if a.ndim != len(s.shape) + 1 or tuple(a.shape[1:]) != s.shape:
                want_shape = ", ".join(map(str, ("B", *s.shape)))
                raise ValueError(f"input {s.name!r} has shape {a.shape}, the contract wants ({want_shape})")
            sizes.add(a.shape[0])
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on batch size: { {k: v.shape[0] for k, v in batch.items()} }")
        (b,) = sizes
        if not 1 <= b <= MAX_BATCH_SIZE:
            raise ValueError(f"batch size {b} is outside 1..{MAX_BATCH_SIZE}")
        return b

    def _send(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = []
        for s in self.inputs:
            a = np.ascontiguousarray(batch[s.name])
            t = grpcclient.InferInput(s.name, list(a.shape), s.dtype)
            t.set_data_from_numpy(a)
            inputs.append(t)
        outputs = [grpcclient.InferRequestedOutput(s.name) for s in self.outputs]
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                result = self._client.infer(self.model_name, inputs, outputs=outputs, client_timeout=self.timeout_s)
                return result.as_numpy(self.outputs[0].name)
            except InferenceServerException as e:
                if not _is_transient(e):
                    raise InferenceFailedError(f"Triton at {self.url} failed the request: {e}") from e
                if attempt == self.retries:
                    raise self._unavailable(f"{e.status()} after {self.retries + 1} attempts: {e.message()}") from e
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities for one batch of windows (shape (B,) + the contract output shape)."""
        self._validate(batch)
        return self._send(batch)

    def infer_many(self, batches: Iterable[dict[str, np.ndarray]],
                   on_wait: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
        """Results for ``batches`` in input order, with up to ``max_in_flight`` requests outstanding.

        Batches are read lazily (one per result, plus the in-flight window), so memory stays bounded.
        ``on_wait``: called every ``WAIT_TICK_S`` while an answer is awaited (the isolation watchdog's
        heartbeat: a server that is slow, not a decoder that hangs; each request has its own deadline).
        """
        pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="triton-infer")
        pending: deque[Future] = deque()

        def answer(fut: Future) -> np.ndarray:
            while on_wait is not None:
                try:
                    return fut.result(timeout=WAIT_TICK_S)
                except TimeoutError:
                    on_wait()
            return fut.result()

        try:
            for batch in batches:
                self._validate(batch)  # fail before sending, in the caller's thread
                pending.append(pool.submit(self._send, batch))
                if len(pending) >= self.max_in_flight:
                    yield answer(pending.popleft())
            while pending:
                yield answer(pending.popleft())
        finally:
            for f in pending:  # an abandoned generator or an error: drop what has not started
                f.cancel()
            pool.shutdown(wait=True)

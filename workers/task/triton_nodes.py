"""One Triton per Ray node: `emoframe label --ray-address ADDR --triton per-node`.

The embedded server listens on 127.0.0.1 of the machine that runs the flow, so video tasks on other nodes
cannot reach it. Here each node that can take video tasks gets its own server, started by a Ray actor pinned
to that node (NodeAffinitySchedulingStrategy, soft=False), still on that node's loopback: nothing new
listens on the network. A video task looks up its own node's server in the run's LabelConfig
(``triton_nodes``: node id -> gRPC URL) and checks, through the server's id (``tritonserver --id``), that the
server answering on that port is its node's; video tasks are only scheduled onto nodes that have one
(a label selector on Ray's ``ray.io/node-id`` node label).

The model goes to the nodes by value (``pack_model``): the config and the one version folder Triton serves,
1.8 MB for version 3, put once in Ray's object store. Not by path: a node's install may hold another
model_repo (an older checkout, or none at --model-repo's path), and a node serving another version than the
driver read would label rows into the wrong model_version partition. By value, every node serves the bytes
the driver chose, and the servers' versions are checked equal before any video starts.

What each server declares to Ray (so that Ray does not place more video tasks beside it than the node holds):
CPUs (half the node with a KIND_CPU config, one with KIND_GPU; see TRITON_CPU_SHARE), ``TRITON_MEMORY_MB``
(measured by benchmarks/triton_node.py), and with a KIND_GPU config every GPU of its node (one model instance
per visible GPU; Ray's CUDA_VISIBLE_DEVICES for the actor reaches the server). A KIND_GPU config gets servers
on GPU nodes only; a KIND_CPU one never holds a GPU.

Servers stop when the run ends: the flow stops them on the way out (also when a signal unwinds it), and
they are non-detached actors, so Ray kills them when the driver dies; the server process group is guarded
(workers/processes/lifeline.py) so that a killed actor takes its tritonserver and backend stubs along, and each actor
sweeps what killed runs left on its node before it starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from emoframe.workers.spec.contract import MODEL_NAME
from emoframe.workers.spec.errors import ServiceUnavailableError
from emoframe.workers.processes.lifeline import TRITON_WORKDIR_PREFIX
from emoframe.workers.spec.model_versions import latest_version
from emoframe.workers.serving.triton_config import CONFIG_NAME, instance_kind
from emoframe.workers.task.video_job import LabelConfig

logger = logging.getLogger(__name__)

# CPUs a server declares to Ray. With KIND_CPU the model runs on the node's cores: about 1.6 ms of CPU per
# labelled frame of one face on one thread (docs/triton_bench_cpu.json), about as much as a --faces detect
# video task spends decoding and tracking the frame. Half the node then, the rest for video tasks; model.py's
# CPU instances take the same share of the cores as threads (workers/serving/triton_backend.py, CPU_SHARE).
# With KIND_GPU the model is on the GPU and one core feeds it (gRPC, the dynamic batcher, the backend stub's
# copies).
TRITON_CPU_SHARE = 0.5
TRITON_GPU_NODE_CPUS = 1.0
# Peak proportional set size of tritonserver and its Python-backend stub serving model version 3 on CPU,
# 974 MB with two batches of 16 windows in flight (benchmarks/triton_node.py), with a margin for more.
TRITON_MEMORY_MB = 1536
READY_TIMEOUT_S = 300.0  # placement (the node may be busy) plus the server's start
SERVER_ID_PREFIX = "emoframe-"  # + "<run id>-<Ray node id>": what the server answers as its name
NODE_LABEL = "ray.io/node-id"  # Ray's built-in node label


def cpu_instance_threads(cores: int, instances: int = 1) -> int:
    """Threads of each CPU instance of the model on a machine of ``cores``: TRITON_CPU_SHARE of them, split
    between the instances (model.py computes the same: it deploys without emoframe, so it has its own copy)."""
    return max(1, int(cores * TRITON_CPU_SHARE) // instances)


class NoNodeServerError(ServiceUnavailableError):
    """A video task runs on a node that has no server of this run (it joined after the run started)."""


class WrongServerError(ServiceUnavailableError):
    """The server on this node's port is not the one this run started there (ours died, another took the port)."""


def server_id(run_id: str, node_id: str) -> str:
    """The name a run's server on a node answers with: another run's server on that node has another."""
    return f"{SERVER_ID_PREFIX}{run_id}-{node_id}"


# -- the model, by value ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFiles:
    """The served model's folder as Triton needs it: config.pbtxt and the version it serves."""

    model_name: str
    version: str
    kind: str  # the config's instance kind: KIND_CPU or KIND_GPU
    files: tuple[tuple[str, bytes], ...]  # path under the model's folder -> content

    @property
    def size(self) -> int:
        return sum(len(b) for _, b in self.files)

    def write(self, repo: Path) -> Path:
        """Write the model folder into ``repo`` (a Triton model repository); returns ``repo``."""
        for rel, data in self.files:
            path = repo / self.model_name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return repo


def pack_model(repo: Path, model_name: str = MODEL_NAME) -> ModelFiles:
    """Read the model Triton would serve from ``repo``: its config and its highest version with a model file
    (Triton's default version policy; the only version shipped, so a node serves exactly that one)."""
    model_dir = Path(repo) / model_name
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{model_dir / CONFIG_NAME} does not exist: --model-repo must be a Triton model "
                                f"repository holding {model_name}/ (this checkout's is model_repo/)")
    vdir = latest_version(model_dir)
    if vdir is None:
        raise FileNotFoundError(f"{model_dir} has no version folder with a model: export one first")
    files = [(CONFIG_NAME, (model_dir / CONFIG_NAME).read_bytes())]
    files += [(p.relative_to(model_dir).as_posix(), p.read_bytes()) for p in sorted(vdir.rglob("*"))
              if p.is_file() and "__pycache__" not in p.parts]
    return ModelFiles(model_name, vdir.name, instance_kind(model_dir), tuple(files))


# -- where servers go ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodePlan:
    node_id: str
    address: str  # the node's IP, for messages
    num_cpus: float
    num_gpus: int
    memory_mb: int

    def ray_options(self) -> dict:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "memory": self.memory_mb * 2**20,
                "scheduling_strategy": NodeAffinitySchedulingStrategy(self.node_id, soft=False),
                "max_restarts": 0}  # a restarted server would listen on another port than the tasks were given


def server_cpus(kind: str, node_cpus: float) -> float:
    """CPUs one node's server declares: see TRITON_CPU_SHARE."""
    if kind == "KIND_GPU":
        return TRITON_GPU_NODE_CPUS
    return max(1.0, float(math.floor(node_cpus * TRITON_CPU_SHARE)))


def plan_servers(nodes: list[dict], kind: str, task_cpus: float, task_memory_mb: int,
                 memory_mb: int = TRITON_MEMORY_MB) -> tuple[list[NodePlan], list[str]]:
    """Which alive nodes (``ray.nodes()`` entries) get a server: those whose resources hold the server and at
    least one video task beside it (a server alone would serve nobody), with a GPU when the config is
    KIND_GPU. Returns the plans and, for each node left out, why (no video task runs there)."""
    plans, left_out = [], []
    for n in nodes:
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        gpus = int(res.get("GPU", 0)) if kind == "KIND_GPU" else 0
        where = f"node {n['NodeID'][:8]} ({n.get('NodeManagerAddress', '?')})"
        cpus = server_cpus(kind, res.get("CPU", 0))
        need_cpu, need_mem = cpus + task_cpus, (memory_mb + task_memory_mb) * 2**20
        if kind == "KIND_GPU" and gpus < 1:
            left_out.append(f"{where}: no GPU, and the model config is KIND_GPU")
        elif res.get("CPU", 0) < need_cpu or res.get("memory", 0) < need_mem:
            left_out.append(f"{where}: {res.get('CPU', 0):g} CPU and {res.get('memory', 0) / 2**20:.0f} MB, "
                            f"less than a Triton and one video need ({need_cpu:g} CPU, {need_mem / 2**20:.0f} MB)")
        else:
            plans.append(NodePlan(n["NodeID"], n.get("NodeManagerAddress", "?"), cpus, gpus, memory_mb))
    return plans, left_out


def _room(nodes: list[dict], plans: list[NodePlan]) -> tuple[dict[str, float], ...]:
    """Per node with a server: its CPUs and memory (``ray.nodes()`` totals) less what the server declared."""
    total = {n["NodeID"]: n.get("Resources", {}) for n in nodes}
    return tuple({"CPU": total.get(p.node_id, {}).get("CPU", 0.0) - p.num_cpus,
                  "memory": total.get(p.node_id, {}).get("memory", 0.0) - p.memory_mb * 2**20} for p in plans)


# -- the server on one node ---------------------------------------------------------------------------
def _http_json(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    with opener.open(url, timeout=10) as r:
        return json.loads(r.read())


class TritonNode:
    """A Ray actor (created by ``per_node_tritons``) that runs one embedded Triton on its node."""

    def __init__(self, model: ModelFiles, run_id: str, node_id: str):
        import ray

        from emoframe.workers.output import download_cache
        from emoframe.workers.processes.lifeline import sweep
        from emoframe.workers.inference.triton_client import TritonClient
        from emoframe.workers.serving.triton_server import EmbeddedTriton

        here = ray.get_runtime_context().get_node_id()
        if here != node_id:  # hard affinity makes this impossible; a wrong URL map would be a silent error
            raise RuntimeError(f"Triton actor for node {node_id} was placed on node {here}")
        self.node_id = node_id
        sweep()  # leftovers of killed runs on this node (their shared memory, work folders)
        download_cache.sweep()  # and copies of remote videos that only killed runs held
        # The pid in the name lets a later sweep remove the folder if this actor is killed.
        self.repo = Path(tempfile.mkdtemp(prefix=f"{TRITON_WORKDIR_PREFIX}{os.getpid()}-repo-"))
        model.write(self.repo)
        # Named by run and node: two nodes of one host (a test cluster) must not share a log.
        log = Path(tempfile.gettempdir()) / f"emoframe-tritonserver-{run_id}-{node_id[:12]}.log"
        # Ray owns this process's signals; stop() and the process-group guard stop the server.
        self.server = EmbeddedTriton(self.repo, log_path=log, stop_on_signals=False,
                                     server_id=server_id(run_id, node_id), model_names=(model.model_name,))
        try:
            self.server.start()
            with TritonClient(self.server.grpc_url, model_name=model.model_name) as client:
                client.check_ready()  # and the contract fingerprint
                self.version = client.served_version()
        except BaseException:
            self.stop()
            raise

    def info(self) -> dict:
        import socket

        return {"node_id": self.node_id, "url": self.server.grpc_url, "version": self.version,
                "log": str(self.server.log_path), "host": socket.gethostname(), "pid": self.server.pid}

    def inferences(self) -> int:
        """Windows this server has run (Triton's inference count, all versions of the model)."""
        stats = _http_json(f"http://{self.server.http_url}/v2/models/{MODEL_NAME}/stats")
        return sum(int(m.get("inference_count", 0)) for m in stats.get("model_stats", []))

    def stop(self) -> int | None:
        """Stop the server and remove the model copy. Returns the server's inference count, if it still ran."""
        count = None
        if self.server.running:
            with contextlib.suppress(Exception):
                count = self.inferences()
        self.server.stop()
        shutil.rmtree(self.repo, ignore_errors=True)
        return count


# -- the run's servers, from the driver ---------------------------------------------------------------
@dataclass
class Served:
    """What a run labels with: the model version, and either one URL or a URL per node."""

    version: str
    url: str = ""  # one server for every task
    nodes: tuple[tuple[str, str], ...] = ()  # node id -> that node's gRPC URL (on its loopback)
    servers: list[dict] = field(default_factory=list)  # each server's info(), and its count when stopped
    # What each node with a server has left for video tasks (Ray's "CPU" and "memory", less the server's).
    room: tuple[dict[str, float], ...] = ()

    def task_options(self) -> dict:
        """Ray options of the video tasks: only onto nodes with a server."""
        if not self.nodes:
            return {}
        return {"label_selector": {NODE_LABEL: f"in({','.join(n for n, _ in self.nodes)})"}}


# The servers of the last per-node run in this process, with their inference counts once stopped: what an
# operator (and the cluster test) reads to see how the work spread over the nodes.
last_servers: list[dict] = []


@contextlib.contextmanager
def per_node_tritons(model_repo: Path, run_id: str, *, ready_timeout_s: float = READY_TIMEOUT_S,
                     memory_mb: int = TRITON_MEMORY_MB) -> Iterator[Served]:
    """Start a Triton on each alive node of the connected Ray cluster that can take video tasks, wait until
    every one serves the same model version, yield them, and stop them all on the way out."""
    import ray

    from emoframe.workers.task.resources import video_task_resources

    model = pack_model(model_repo)
    task = video_task_resources()
    plans, left_out = plan_servers(ray.nodes(), model.kind, task.cpus, task.memory_mb, memory_mb)
    for why in left_out:
        logger.warning("no Triton and no video on %s", why)
    if not plans:
        raise ServiceUnavailableError(
            "no Ray node can run a per-node Triton: " + "; ".join(left_out) +
            (". Switch the model to CPU (`python -m emoframe.workers.serving.triton_config set-kind <model_repo>/"
             f"{model.model_name} KIND_CPU`) or add GPU nodes" if model.kind == "KIND_GPU" else
             ". Give the nodes more CPUs or memory (`ray start --num-cpus/--memory`)"))
    actor_cls = ray.remote(TritonNode)
    ref = ray.put(model)
    actors = {}
    global last_servers
    last_servers = []
    try:
        for p in plans:
            actors[p.node_id] = actor_cls.options(**p.ray_options()).remote(ref, run_id, p.node_id)
        infos = _wait_ready(actors, {p.node_id: p for p in plans}, ready_timeout_s)
        versions = {i["version"] for i in infos}
        if versions != {model.version}:  # the same bytes everywhere: anything else is a broken node
            raise ServiceUnavailableError(f"the per-node servers serve versions {sorted(versions)}, the run shipped "
                                          f"version {model.version}")
        for i in infos:
            logger.info("Triton on node %s (%s) ready at %s (log there: %s)", i["node_id"][:8], i["host"], i["url"],
                        i["log"])
        served = Served(model.version, nodes=tuple((i["node_id"], i["url"]) for i in infos), servers=infos,
                        room=_room(ray.nodes(), plans))
        last_servers = infos
        yield served
    finally:
        _stop_all(actors)


def _wait_ready(actors: dict, plans: dict[str, NodePlan], timeout_s: float) -> list[dict]:
    import ray

    refs = {actor.info.remote(): node for node, actor in actors.items()}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = ", ".join(f"{refs[r][:8]} ({plans[refs[r]].address})" for r in pending)
        raise ServiceUnavailableError(
            f"the Triton of node {late} did not start within {timeout_s:.0f} s: the node has not had "
            f"{plans[refs[pending[0]]].num_cpus:g} CPU and {plans[refs[pending[0]]].memory_mb} MB free for it "
            "(other work holds them?), or the server is slow to load; see `ray status`")
    infos = []
    for r in ready:
        try:
            infos.append(ray.get(r))
        except ray.exceptions.RayActorError as exc:
            node = plans[refs[r]]
            raise ServiceUnavailableError(f"the Triton of node {node.node_id[:8]} ({node.address}) failed to "
                                          f"start: {exc}") from None
    return infos


def _stop_all(actors: dict) -> None:
    """Stop every server (a clean stop, which also reads its count), then end the actors."""
    import ray

    refs = {actor.stop.remote(): node for node, actor in actors.items()}
    counts = {}
    with contextlib.suppress(Exception):
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=60)
        for r in done:
            with contextlib.suppress(Exception):
                counts[refs[r]] = ray.get(r)
    for info in last_servers:
        info["inferences"] = counts.get(info["node_id"])
        n = info["inferences"]
        logger.info("Triton on node %s (%s) stopped; %s", info["node_id"][:8], info["host"],
                 "its count is unknown" if n is None else f"it ran {n} windows")
    for actor in actors.values():
        with contextlib.suppress(Exception):
            ray.kill(actor)  # its process goes, and the guarded server group with it if stop() did not finish


# -- the task side ------------------------------------------------------------------------------------
def for_this_node(cfg: LabelConfig) -> LabelConfig:
    """In a video task: ``cfg`` with its node's server URL, when the run has a server per node; checked to be
    this node's server. Raises NoNodeServerError / WrongServerError (both retried, then recorded as
    triton_unavailable, so the next run labels the video) rather than use another node's loopback."""
    if not cfg.triton_nodes:
        return cfg
    import ray

    from emoframe.workers.inference.triton_client import TritonClient

    node = ray.get_runtime_context().get_node_id()
    url = dict(cfg.triton_nodes).get(node)
    if url is None:
        raise NoNodeServerError(
            f"Ray node {node[:8]} has no Triton of this run: it joined the cluster after the run started a Triton "
            "on each node. Video tasks are kept off such nodes; this one got here anyway. The next run starts a "
            "server there too")
    with TritonClient(url, model_name=cfg.model_name) as client:
        answered = client.server_id()
    if answered != server_id(cfg.run_id, node):
        raise WrongServerError(f"the Triton at {url} on Ray node {node[:8]} is {answered!r}, not this run's server "
                               f"of this node ({server_id(cfg.run_id, node)!r}): this node's server has stopped")
    return replace(cfg, triton_url=url)

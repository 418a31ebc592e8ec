"""Triton Python-backend model: runs the exported TorchScript ``model.pt`` next to this file.

Self-contained on purpose (torch, numpy and triton_python_backend_utils only) so this folder deploys
unchanged to a stock Triton image. Tensor names and dtypes come from the model config, which is
generated from the project's contract; the TorchScript forward takes the inputs as keyword arguments
named like the config inputs and returns the output tensor (or a tuple / dict of them).

A model made of a per-frame face reader and a window model (``training/model.py: ExportWrapper``) is
served split in two: the reader sees each distinct face crop of a batch once. Windows overlap (a frame is
in window / stride of them) and masked frames are all zeros, so a batch of a video's windows holds about
half as many distinct crops as frames, and the reader is nearly all of the model's cost. The split is
checked against the module's own forward when the model loads and is used only if it agrees.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

MODEL_FILE = "model.pt"


# The share of a node's cores this model's CPU instances take: the rest decode, track faces and preprocess
# the videos whose frames it reads. A per-node server declares the same share to Ray
# (workers/task/triton_nodes.py, TRITON_CPU_SHARE). On the 2-core machine, end to end through the CLI, one
# thread labelled 159 frames/s against 146 with both cores: the second thread only took a core from the
# decoder.
CPU_SHARE = 0.5


def _cpu_threads(model_config: dict) -> int:
    """Threads of one CPU instance (each instance is its own process): CPU_SHARE of the cores, split
    between the instances."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    instances = sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1
    return max(1, int(cores * CPU_SHARE) // instances)


# Tensors cross the backend boundary through DLPack, not numpy: the backend stub of a given Triton release is
# built against one numpy ABI, and with another numpy installed (numpy 2 under a stub built for numpy 1)
# as_numpy() and Tensor(name, ndarray) silently return zeros or empty tensors. DLPack has no such coupling
# (checked on Triton 2.51 for every dtype of the contract: UINT8, BOOL, FP32).
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32,
                 "uint8": torch.uint8, "bool": torch.bool}


def _to_torch(t) -> torch.Tensor:
    return torch.from_dlpack(t.to_dlpack())


def _to_triton(name: str, x: torch.Tensor):
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(x.contiguous()))


FACE_INPUT = "face"  # the contract's per-frame crops [B, T, H, W, C]; the other inputs go to the window model
SPLIT_PARAMETER = "face_reader_split"  # config parameter: "off" serves the plain forward
SPLIT_ATOL = 1e-4  # the split path may differ from forward by float rounding only (measured: < 1e-5)
# On CPU the reader reads its crops this many at a time: a batch's activations then stay in the core's cache.
# FER's network on one thread here: 1.44 ms a crop in chunks of 32 against 2.97 ms for 512 at once (a
# batch of 16 windows holds about 270 distinct crops), with the same answers.
CPU_READER_CHUNK = 32


class FaceReaderSplit:
    """forward(face, *rest) computed as fuse(reader(each distinct crop once), *rest).

    ``reader`` maps crops [N, H, W, C] to per-frame evidence [N, E]; ``fuse`` maps evidence [B, T, E] and the
    other inputs to the output. Exports since the split have a ``fuse`` method; versions exported before it
    (``reader`` and ``model`` only) end in a softmax over the window model's logits, as their forward does.
    """

    def __init__(self, module: torch.jit.ScriptModule, optimise: bool):
        reader = module.reader
        if optimise:  # CPU: batch norm folded into the convolutions, oneDNN kernels (about 1.7x here)
            reader = torch.jit.optimize_for_inference(torch.jit.freeze(reader.eval()))
        self.reader = reader
        self.chunk = CPU_READER_CHUNK if optimise else None  # a GPU reads the batch at once
        if hasattr(module, "fuse"):
            self.fuse = module.fuse
        else:
            window_model = module.model
            self.fuse = lambda evidence, *rest: torch.softmax(window_model(evidence, *rest), dim=-1)

    def __call__(self, face: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        b, t = face.shape[:2]
        distinct, where = torch.unique(face.reshape(b * t, -1), dim=0, return_inverse=True)
        crops = distinct.view(-1, *face.shape[2:])
        if self.chunk:
            evidence = torch.cat([self.reader(c) for c in crops.split(self.chunk)])
        else:
            evidence = self.reader(crops)
        return self.fuse(evidence[where].view(b, t, -1), *rest)


def _probe_inputs(config: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """Two windows overlapping by half, as a video's windows do, with every mask on."""
    gen = torch.Generator().manual_seed(0)
    feeds = {}
    for t in config["input"]:
        dims = [int(d) for d in t["dims"]]
        frames, shape = dims[0], [2] + dims
        kind = t["data_type"]
        if kind == "TYPE_UINT8":
            distinct = torch.randint(0, 256, [frames + frames // 2] + dims[1:], generator=gen, dtype=torch.uint8)
            x = torch.stack([distinct[:frames], distinct[frames // 2:frames // 2 + frames]])
        elif kind == "TYPE_BOOL":
            x = torch.ones(shape, dtype=torch.bool)
        else:
            x = torch.randn(shape, generator=gen)
        feeds[t["name"]] = x.to(device)
    return feeds


def face_reader_split(module, config: dict, device: torch.device) -> FaceReaderSplit | None:
    """The split of a reader + window model, if this module is one and the split gives its forward's answers.
    The config parameter ``face_reader_split: "off"`` serves the plain forward (a benchmark's baseline)."""
    setting = config.get("parameters", {}).get(SPLIT_PARAMETER, {}).get("string_value", "on")
    if setting == "off":
        return None
    names = [t["name"] for t in config["input"]]
    if not names or names[0] != FACE_INPUT or not hasattr(module, "reader"):
        return None
    if not hasattr(module, "fuse") and not hasattr(module, "model"):
        return None
    try:
        split = FaceReaderSplit(module, optimise=device.type == "cpu")
        feeds = _probe_inputs(config, device)
        with torch.inference_mode():
            want = module(**feeds)
            got = split(*feeds.values())
        if isinstance(want, torch.Tensor) and got.shape == want.shape and \
                torch.allclose(got, want, atol=SPLIT_ATOL, rtol=0):
            return split
    except Exception as e:  # any surprise: serve the plain forward, which is always right
        pb_utils.Logger.log_warn(f"face-reader split not used ({type(e).__name__}: {e}); serving forward")
    return None


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]]
        self.model_name = args["model_name"]

        if args["model_instance_kind"] == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(_cpu_threads(config))

        path = os.path.join(args["model_repository"], args["model_version"], MODEL_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: export the trained TorchScript model to it first")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        self.split = face_reader_split(self.model, config, self.device)
        if self.split is not None:
            pb_utils.Logger.log_info(f"{self.model_name}: the face reader reads each distinct crop once")

    def _outputs_as_list(self, out) -> list[torch.Tensor]:
        if isinstance(out, torch.Tensor):
            out = [out]
        elif isinstance(out, dict):
            out = [out[name] for name, _ in self.outputs]
        if len(out) != len(self.outputs):
            raise RuntimeError(f"model returned {len(out)} outputs, config declares {len(self.outputs)}")
        return list(out)

    def _read(self, request) -> dict[str, torch.Tensor]:
        arrays = {}
        for name in self.input_names:
            t = pb_utils.get_input_tensor_by_name(request, name)
            if t is None:
                raise ValueError(f"missing input {name!r}")
            arrays[name] = _to_torch(t)
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on batch size: { {n: a.shape for n, a in arrays.items()} }")
        return arrays

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        good: list[tuple[int, dict[str, torch.Tensor]]] = []
        for i, req in enumerate(requests):
            try:
                good.append((i, self._read(req)))
            except Exception as e:  # a malformed request fails alone, never the whole batch
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e)))

        if good:
            try:
                # One forward over every request Triton's dynamic batcher handed us.
                sizes = [arrays[self.input_names[0]].shape[0] for _, arrays in good]
                feeds = {
                    name: torch.cat([arrays[name] for _, arrays in good]).to(self.device, non_blocking=True)
                    for name in self.input_names
                }
                with torch.inference_mode():
                    if self.split is not None:
                        outs = self._outputs_as_list(self.split(*(feeds[name] for name in self.input_names)))
                    else:
                        outs = self._outputs_as_list(self.model(**feeds))
                host = [o.detach().cpu().to(_TORCH_DTYPES[np.dtype(dt).name]) for o, (_, dt) in zip(outs, self.outputs)]
                offsets = np.cumsum([0] + sizes)
                if any(h.shape[0] != offsets[-1] for h in host):
                    raise RuntimeError(f"model returned {[tuple(h.shape) for h in host]} for a batch of {offsets[-1]}")
                for k, (i, _) in enumerate(good):
                    lo, hi = int(offsets[k]), int(offsets[k + 1])
                    tensors = [_to_triton(name, h[lo:hi]) for h, (name, _) in zip(host, self.outputs)]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as e:  # report on every affected response; raising would fail the whole call
                msg = f"{self.model_name} forward failed: {type(e).__name__}: {e}"
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(msg))
        return responses

    def finalize(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

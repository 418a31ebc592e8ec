"""Imported once by the isolation forkserver (workers/processes/isolation.py): the face networks are scripted and
loaded there, so every video's child starts with them (shared copy-on-write) instead of spending 1-3 s on
torch.jit.script and the weight files per video, which was most of a short clip's cost."""

import torch

from emoframe.workers.media.faces.detector import _nets
from emoframe.workers.media.faces.weights import MissingWeightsError

# One thread before anything runs: a forkserver whose OpenMP pool was started would hand its children a
# pool they cannot use (libgomp is not fork-safe). The children set one thread too (workers/task/video_task.py).
torch.set_num_threads(1)
try:
    _nets()
except MissingWeightsError:
    pass  # not set up: each video's child raises the error that says how to fetch them

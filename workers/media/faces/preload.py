"""Imported once by the isolation forkserver (workers/processes/isolation.py): the face networks are built and
loaded there, so every video's child starts with them (shared copy-on-write) instead of spending a second on
the weight file and onnxruntime's set-up per video, which was most of a short clip's cost."""

from emoframe.workers.media.faces.detector import _nets
from emoframe.workers.media.faces.weights import MissingWeightsError

try:
    _nets()
except MissingWeightsError:
    pass  # not set up: each video's child raises the error that says how to fetch them

"""On PYTHONPATH, makes a full install look like a worker install (pyproject's dependencies without the
`full` extra) to every Python process of a run, Ray's workers included: torch, torchaudio, pytriton and h5py
cannot be imported, and importlib.util.find_spec says they are not there. Each process it loads in appends
its command line to $EMOFRAME_BLOCKER_LOG, so a test can see that the workers had it too."""

import os
import sys

for _name in ("torch", "torchaudio", "pytriton", "h5py"):
    sys.modules[_name] = None  # type: ignore[assignment]

if os.environ.get("EMOFRAME_BLOCKER_LOG"):
    with open(os.environ["EMOFRAME_BLOCKER_LOG"], "a") as _log:
        _log.write(" ".join(sys.argv) + "\n")

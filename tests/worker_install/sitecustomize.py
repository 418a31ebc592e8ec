"""On PYTHONPATH, makes a full install look like a worker install (pyproject's dependencies without the
`full` extra) to every Python process of a run, Ray's workers included: torch, torchaudio and pytriton
cannot be imported, and importlib.util.find_spec says they are not there."""

import sys

for _name in ("torch", "torchaudio", "pytriton", "h5py"):
    sys.modules[_name] = None  # type: ignore[assignment]

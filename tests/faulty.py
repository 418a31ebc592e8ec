"""Decoders that misbehave the way decord does, injected through LabelConfig.decoder ("module:Class")."""

from __future__ import annotations

import ctypes
import time

import numpy as np

from emoframe.workers.media.decode import VideoDecoder


class HangingDecoder(VideoDecoder):
    """Hangs inside a batch read after the first chunk, ignoring signals other than SIGKILL."""

    def iter_frames(self, path, width, height, chunk, **kw):
        it = super().iter_frames(path, width, height, chunk, **kw)
        yield next(it)
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(3600)


class CrashingDecoder(VideoDecoder):
    """Segfaults in the middle of decoding, like decord on some inputs."""

    def iter_frames(self, path, width, height, chunk, **kw):
        it = super().iter_frames(path, width, height, chunk, **kw)
        yield next(it)
        ctypes.string_at(0)  # SIGSEGV


class LeakingDecoder(VideoDecoder):
    """Allocates without bound, like decord's leak on 4K input."""

    def iter_frames(self, path, width, height, chunk, **kw):
        hoard = []
        for frames in super().iter_frames(path, width, height, chunk, **kw):
            hoard.append(np.ones((256, 1024, 1024), np.uint8))  # 256 MB per chunk
            yield frames
        while True:
            hoard.append(np.ones((256, 1024, 1024), np.uint8))




class CrashOnceDecoder(VideoDecoder):
    """Segfaults on its first try of a file (a marker beside the file remembers it), then finds a corrupt frame:
    a crash that does not repeat, followed by the file's real problem."""

    def iter_frames(self, path, width, height, chunk, **kw):
        import os

        from emoframe.workers.spec.errors import BadInputError

        marker = path + ".crashed"
        if not os.path.exists(marker):
            open(marker, "w").close()
            ctypes.string_at(0)  # SIGSEGV
        raise BadInputError("corrupt_frames", "frame 3 is corrupt")
        yield  # a generator, like the others


class CorruptFromDecoder(VideoDecoder):
    """Finds corrupt frames from frame ``FROM`` on, wherever decoding starts: a damaged stretch in the middle
    of a long file (what decord's DECORDLimitReachedError becomes in workers/media/decode.py)."""

    FROM = 200

    def iter_frames(self, path, width, height, chunk, start=0, stop=None, **kw):
        from emoframe.workers.spec.errors import BadInputError

        for frames in super().iter_frames(path, width, height, chunk, start, stop, **kw):
            if start + len(frames) > self.FROM:
                raise BadInputError("corrupt_frames", f"frames {start}-{start + len(frames) - 1} include corrupt "
                                    "frames; re-encode the file")
            start += len(frames)
            yield frames

"""From a video file to model inputs: decoding (frames and audio), faces (detection, tracking,
alignment) and per-frame preprocessing."""

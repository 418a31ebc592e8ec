"""From model inputs to per-frame labels: windows per face track, the Triton client, soft voting."""

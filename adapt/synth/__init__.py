"""Synthetic crowd renderer: the labelled source domain the base model learns from.

A pinhole camera over a textured ground plane with buildings, sky and static
objects; articulated walking people drawn back to front; named styles for
controlled domain shifts; head point and head size labels for every visible
person. See docs/SYNTH.md.
"""

from .camera import Camera, sample_camera
from .crowd import LAYOUTS, sample_crowd, walk
from .people import Appearance, Person, make_person, sample_appearance
from .render import RENDERER_VERSION, VISIBLE_FRACTION, Render, render, render_sample
from .scene import Scene, build_scene, sample_scene
from .styles import STYLES, Look, Style, get_style

__all__ = [
    "Appearance", "Camera", "LAYOUTS", "Look", "Person", "RENDERER_VERSION", "Render", "STYLES", "Scene", "Style",
    "VISIBLE_FRACTION", "build_scene", "get_style", "make_person", "render", "render_sample", "sample_appearance",
    "sample_camera", "sample_crowd", "sample_scene", "walk",
]

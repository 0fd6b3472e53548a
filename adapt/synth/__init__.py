"""Synthetic crowd renderer: the labelled source domain the base model learns from.

A pinhole camera over a textured ground plane with buildings, sky, stands and
static objects; articulated people walking, standing and sitting, drawn back
to front; scene kinds from street views to packed squares and stadium stands
with thousands of people; named styles for controlled domain shifts; head
point and head size labels for every visible person. See docs/SYNTH.md.
"""

from .camera import Camera, sample_camera
from .crowd import LAYOUTS, sample_crowd, walk
from .kinds import KINDS, max_people, sample_kind_scene
from .people import Appearance, Person, make_person, sample_appearance
from .render import RENDERER_VERSION, VISIBLE_FRACTION, Render, render, render_sample
from .scene import Scene, build_scene, sample_scene
from .styles import STYLES, Look, Style, get_style
from .view import capacity

__all__ = [
    "Appearance", "Camera", "KINDS", "LAYOUTS", "Look", "Person", "RENDERER_VERSION", "Render", "STYLES", "Scene", "Style",
    "VISIBLE_FRACTION", "build_scene", "capacity", "get_style", "make_person", "max_people", "render", "render_sample",
    "sample_appearance", "sample_camera", "sample_crowd", "sample_kind_scene", "sample_scene", "walk",
]

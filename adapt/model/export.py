"""ONNX export per the DESIGN model contract (``crowdwatch export``).

The graph takes uint8 NHWC RGB (normalisation inside) and returns ``density``
and ``uncertainty`` at stride 8. The flip head is not in the graph: it is a
training-time auxiliary and costs nothing at inference.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from torch import nn

from adapt.model.checkpoint import weights_hash
from adapt.model.network import CrowdCounter, ensemble_mean_std
from adapt.store.atomic import atomic_write

OPSET = 17
INPUT_NAME = "image"
# density and uncertainty are the DESIGN contract; mask_counts (N, M), the
# count under each mask, gives crowd_count_uncertainty exactly (the std of the
# count across masks is not derivable from the per-cell std).
OUTPUT_NAMES = ("density", "uncertainty", "mask_counts")
# Metadata keys every exported model carries (see DESIGN.md).
METADATA_KEYS = ("version", "parent", "camera", "masks", "stride", "recipe", "weights_sha256", "arch", "density_scale", "count_scale")


class InferenceGraph(nn.Module):
    def __init__(self, model: CrowdCounter):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        per_mask = self.model.ensemble(image)
        density, uncertainty = ensemble_mean_std(per_mask)
        return density, uncertainty, per_mask.sum(dim=(2, 3, 4)).transpose(0, 1)


def model_metadata(model: CrowdCounter, meta: dict) -> dict[str, str]:
    state = model.state_dict()
    out = {
        "version": str(meta.get("version", "unversioned")),
        "parent": str(meta.get("parent") or ""),
        "camera": str(meta.get("camera", "base")),
        "masks": str(model.config.masks),
        "stride": "8",
        "recipe": json.dumps(meta.get("recipe", {}), sort_keys=True),
        "weights_sha256": weights_hash(state),
        "arch": model.config.arch,
        "density_scale": str(model.config.density_scale),
        # the per-camera calibration already applied inside the graph (crowdwatch calibrate)
        "count_scale": str(model.config.count_scale),
    }
    return out


def export_onnx(model: CrowdCounter, out: Path, meta: dict | None = None, sample_hw: tuple[int, int] = (256, 320)) -> Path:
    """Write ``out`` atomically and return it."""
    import onnx

    if model.config.arch != "lite0":
        # convDU/convLR unroll over rows/columns, so the trace would fix H and W
        raise ValueError("ONNX export supports the lite0 arch; serve the vgg16_sfcn variant with the torch backend")
    model = model.eval().cpu()
    # export restores the wrapper's train/eval mode onto every submodule afterwards
    graph = InferenceGraph(model).eval()
    sample = torch.zeros((1, *sample_hw, 3), dtype=torch.uint8)
    graph_bytes = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (sample,),
            graph_bytes,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                INPUT_NAME: {0: "N", 1: "H", 2: "W"},
                "density": {0: "N", 2: "H8", 3: "W8"},
                "uncertainty": {0: "N", 2: "H8", 3: "W8"},
                "mask_counts": {0: "N"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_model_from_string(graph_bytes.getvalue())
    for key, value in model_metadata(model, meta or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "crowdwatch"
    onnx.checker.check_model(proto)
    return atomic_write(out, proto.SerializeToString())


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}

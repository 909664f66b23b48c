"""The import's plan for full-size files: a header with every tensor of LTX-2.0's, 2.3's and 2.5's full-size components
(named as Lightricks' single file names them, shapes from the family configs built on the meta device) over a
sparse file of the promised size, so nothing is allocated. The configs read back from the shapes are the full-size
ones, which checks the shape rules on the real sizes (2.3's VAE decoder is not symmetric, unlike the tiny models')."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from gpu_runner import import_model, single_file_keys

BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
COMPONENTS = {
    version: ("transformer", "connectors", "vae", "audio_vae", "vocoder") for version in ("2.0", "2.3", "2.5")
}
COMPONENTS["2.5"] += ("diffusion_decoder", "duration_head")  # where the import takes a 2.5 file to hold them


def sparse_single_file(path: Path, version: str) -> None:
    family = json.loads(import_model.FAMILY_CONFIGS.read_text())[version]
    entries, offset = {}, 0
    for component in COMPONENTS[version]:
        entry = family[component]
        with torch.device("meta"):
            model = import_model._model_class(entry["class"]).from_config(entry["config"])
        for name, tensor in model.state_dict().items():
            single = single_file_keys.to_single_file(component, name, version)
            size = tensor.numel() * BYTES[tensor.dtype]
            shape, offsets = list(tensor.shape), [offset, offset + size]
            entries[single] = {"dtype": DTYPES[tensor.dtype], "shape": shape, "data_offsets": offsets}
            offset += size
    header = json.dumps(entries).encode()
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(header)) + header)
        out.truncate(8 + len(header) + offset)  # a hole: no block is written


@pytest.mark.parametrize("version", ["2.0", "2.3", "2.5"])
def test_a_full_size_files_configs_are_the_full_size_ones(tmp_path, version):
    path = tmp_path / f"ltx-{version}-full-dev.safetensors"
    sparse_single_file(path, version)

    plan = import_model.plan([path], None, None)

    assert (plan.version, plan.variant) == (version, "dev")
    family = json.loads(import_model.FAMILY_CONFIGS.read_text())[version]
    for component in COMPONENTS[version]:
        got = import_model._saved(plan.configs[component])
        for key, value in family[component]["config"].items():
            assert json.loads(json.dumps(got[key])) == value, f"{component}.{key}"


@pytest.mark.parametrize(
    ("dtype", "scale_shape", "kept"),
    [
        ("F8_E4M3", (), True),  # ComfyUI's per-tensor scale_weight: every row's scale
        ("F8_E4M3", (1,), True),
        ("F8_E4M3", (8, 1), True),  # one per row: the runner's own layout
        ("F8_E4M3", (8,), True),
        ("F8_E4M3", (8, 2), False),  # block scales: no per-row scale is exact
        ("F8_E5M2", (), False),  # the runner stores e4m3
    ],
)
def test_an_fp8_weight_is_kept_as_it_is_only_where_the_runners_fp8_layout_takes_it(dtype, scale_shape, kept):
    weight = import_model.Tensor(Path("dit.safetensors"), "w.weight", dtype, (8, 16), "w.scale_weight")
    weight.scale_shape = scale_shape
    assert weight.keeps_fp8() is kept

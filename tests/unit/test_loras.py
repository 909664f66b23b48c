"""The LoRA library (contract/loras.py), a request's LoRA rules, and the runner's low-rank path (gpu_runner/lora.py)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import torch
from safetensors.torch import save_file

from contract import loras
from contract.library import recognise
from contract.models import demo_spec, with_parts
from contract.provenance import LoraUsed, ModelUsed, Provenance, changes, model_revision
from contract.request import Constraints, LoraChoice, Request, violations
from gpu_runner import fp8, lora
from gpu_runner.families.ltx2.loading import is_fp8_layer

MAX_BYTES = 2**20


def write_lora(path: Path, layers: dict[str, tuple[int, int]], rank: int = 4, metadata=None, prefix="transformer."):
    """A LoRA file of random (down, up) pairs over `layers` (name: (in, out))."""
    generator = torch.Generator().manual_seed(len(layers))
    tensors = {}
    for name, (width_in, width_out) in layers.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = torch.randn(rank, width_in, generator=generator)
        tensors[f"{prefix}{name}.lora_B.weight"] = torch.randn(width_out, rank, generator=generator) * 0.1
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


DEMO_LAYERS = {"transformer_blocks.0.attn1.to_q": (192, 192), "transformer_blocks.1.audio_attn2.to_v": (96, 96)}


def test_a_lora_is_listed_from_its_header_with_rank_family_version_and_trigger_words(tmp_path):
    metadata = {"trigger_words": "purple, violet", "base_model": "LTX-2.0 something"}
    write_lora(tmp_path / "one.safetensors", DEMO_LAYERS, rank=6, metadata=metadata)

    found = loras.scan([tmp_path], MAX_BYTES).get("one")

    assert found.problem is None
    assert (found.family, found.version, found.rank) == ("ltx-2", "2.0", 6)
    assert found.trigger_words == ("purple", "violet")
    assert found.layers["transformer_blocks.0.attn1.to_q"] == loras.LoraLayer(6, 192, 192)
    assert found.size_bytes == (tmp_path / "one.safetensors").stat().st_size


def test_the_original_trainers_names_are_read_as_the_transformers(tmp_path):
    write_lora(
        tmp_path / "orig.safetensors", {"transformer_blocks.0.attn1.to_k": (192, 192)}, prefix="diffusion_model."
    )
    write_lora(tmp_path / "v23.safetensors", {"transformer_blocks.0.attn1.to_gate_logits": (192, 6)})

    library = loras.scan([tmp_path], MAX_BYTES)

    assert list(library.get("orig").layers) == ["transformer_blocks.0.attn1.to_k"]
    assert library.get("v23").version == "2.3"  # a layer only LTX-2.3 has


def test_files_that_cannot_be_used_are_listed_with_why(tmp_path):
    (tmp_path / "pickle.ckpt").write_bytes(b"\x80\x04not a safetensors file")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    write_lora(tmp_path / "big.safetensors", {"a.to_q": (512, 512)}, rank=512)
    (tmp_path / "bad name!.safetensors").write_bytes(b"")
    outside = write_lora(tmp_path.parent / "elsewhere" / "x.safetensors", DEMO_LAYERS)
    (tmp_path / "escape.safetensors").symlink_to(outside)

    library = loras.scan([tmp_path], MAX_BYTES)

    assert "not .safetensors" in library.get("pickle").problem
    assert "not a safetensors file" in library.get("garbage").problem
    assert "over the 1 MB limit (AVP_LORA_MAX_MB)" in library.get("big").problem
    assert "rename the file" in library.get("bad name!").problem
    assert "inside its LoRA folder" in library.get("escape").problem


def test_an_earlier_folder_wins_a_name_and_a_missing_folder_is_skipped(tmp_path):
    first = write_lora(tmp_path / "a" / "same.safetensors", DEMO_LAYERS)
    write_lora(tmp_path / "b" / "same.safetensors", {"transformer_blocks.0.attn1.to_q": (192, 192)})

    library = loras.scan([tmp_path / "missing", tmp_path / "a", tmp_path / "b"], MAX_BYTES)

    assert library.get("same").path == str(first)


@pytest.fixture(scope="module")
def demo(demo_model_dir):
    return with_parts(demo_spec(demo_model_dir), recognise(demo_model_dir))


def test_a_lora_fits_a_model_only_with_its_layers_at_their_widths(tmp_path, demo):
    write_lora(tmp_path / "fits.safetensors", DEMO_LAYERS)
    write_lora(tmp_path / "wide.safetensors", {"transformer_blocks.0.attn1.to_q": (4096, 4096)})
    write_lora(tmp_path / "other.safetensors", {"transformer_blocks.0.attn9.to_q": (192, 192)})
    write_lora(tmp_path / "newer.safetensors", DEMO_LAYERS, metadata={"base_model": "LTX-2.3"})
    library = loras.scan([tmp_path], MAX_BYTES)

    def problem(name):
        return loras.fit_problem(library.get(name), Path(demo.path), demo.version, demo.id)

    assert problem("fits") is None
    assert "as 4096->4096 wide, but model 'demo' has it 192->192" in problem("wide")
    assert "transformer_blocks.0.attn9.to_q" in problem("other")
    assert problem("newer") == "LoRA 'newer' is for LTX-2.3, but model 'demo' is LTX-2.0"
    assert loras.fitting(library.get("fits"), [demo]) == ["demo"]

    choices = (LoraChoice("fits"), LoraChoice("wide"), LoraChoice("absent"))
    found = loras.problems(choices, demo, library)
    assert [field for field, _ in found] == ["loras[1].name", "loras[2].name"]
    assert "the library has: fits, newer, other, wide" in found[1][1]


@pytest.mark.parametrize(
    ("loras_given", "says"),
    [
        ([{"name": "../../etc/passwd"}], "loras[0].name '../../etc/passwd' is not a LoRA name"),
        ([{"name": "sub/dir"}], "no path"),
        ([{"name": "a", "scale": 2.5}], "loras[0].scale 2.5 is outside -2..2"),
        ([{"name": "a", "scale": -3}], "loras[0].scale -3 is outside -2..2"),
        ([{"name": f"l{i}"} for i in range(5)], "5 LoRAs given; at most 4 per job"),
        ([{"name": "a"}, {"name": "a", "scale": 0.5}], "loras[1].name 'a' is given twice"),
    ],
)
def test_the_request_rules_refuse_paths_scales_and_counts_naming_the_field(loras_given, says):
    request = msgspec.convert({"prompt": "x", "loras": loras_given}, Request)
    problems = violations(Constraints(), request)
    assert [field for field, _ in problems] == ["loras"]
    assert says in problems[0][1]


def test_four_loras_at_the_edges_of_the_scale_are_fine():
    request = msgspec.convert(
        {"prompt": "x", "loras": [{"name": "a", "scale": -2}, {"name": "b", "scale": 2}, {"name": "c"}, {"name": "d"}]},
        Request,
    )
    assert violations(Constraints(), request) == []


# ---- the runner's low-rank path ----------------------------------------------------------


def small_model() -> torch.nn.Module:
    """Two linears named as a transformer's, the first FP8-stored as the runner stores it."""
    torch.manual_seed(0)
    block = torch.nn.Module()
    block.attn1 = torch.nn.Module()
    block.attn1.to_q = torch.nn.Linear(16, 16)
    block.attn1.to_k = torch.nn.Linear(16, 8)
    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([block])
    return model


def test_a_lora_file_read_through_diffusers_adds_its_low_rank_update_beside_fp8_weights(tmp_path):
    path = write_lora(tmp_path / "l.safetensors", {"transformer_blocks.0.attn1.to_q": (16, 16)}, rank=2)
    weights = lora.read_lora(path)
    model = small_model()
    fp8.store_in_fp8(model, lambda name: name.endswith("to_q"))
    x = torch.randn(3, 16)
    plain = model.transformer_blocks[0].attn1.to_q(x)

    assert lora.attach(model, [(weights, 0.5)], dtype=torch.float32) == 1
    wrapped = model.transformer_blocks[0].attn1.to_q
    layer = weights.layers["transformer_blocks.0.attn1.to_q"]
    expected = plain + 0.5 * (x @ layer.down.T @ layer.up.T)  # alpha = rank: scale 1 as trained
    assert isinstance(wrapped.base, fp8.FP8Linear) and wrapped.base.weight.dtype == fp8.FP8_DTYPE  # no bf16 copy
    assert torch.allclose(wrapped(x), expected, atol=1e-5)
    assert not any("lora" in key or "down_" in key for key in model.state_dict())  # the cache stores the model alone

    lora.activate(model, ())  # stage 1 of a dev model's fast mode: the group off
    assert torch.equal(wrapped(x), plain)


def test_a_lora_is_put_beside_the_layers_weights_wherever_they_already_are(tmp_path):
    # A weight-cache load puts the transformer on the GPU before its LoRAs come from a file on the CPU; the meta
    # device stands in for the GPU here (a LoRA left on the CPU failed its first pass on an H100: "mat2 is on cpu").
    weights = lora.read_lora(write_lora(tmp_path / "l.safetensors", {"transformer_blocks.0.attn1.to_q": (16, 16)}))
    model = small_model().to("meta")

    lora.attach(model, [(weights, 1.0)], dtype=torch.float32)

    wrapped = model.transformer_blocks[0].attn1.to_q
    assert {buffer.device.type for buffer in wrapped.buffers()} == {"meta"}


def test_the_fused_alternative_matches_the_low_rank_path(tmp_path):
    from diffusers.loaders.peft import PeftAdapterMixin

    class Fusable(torch.nn.Module, PeftAdapterMixin):  # diffusers' peft loader works on its models' mixin
        pass

    layers = {"transformer_blocks.0.attn1.to_q": (16, 16), "transformer_blocks.0.attn1.to_k": (16, 8)}
    weights = lora.read_lora(write_lora(tmp_path / "l.safetensors", layers, rank=3))
    side, fused = small_model(), small_model()
    fused.__class__ = type("FusableModel", (Fusable,), {})
    x = torch.randn(4, 16)
    lora.attach(side, [(weights, 0.7)], dtype=torch.float32)
    lora.fuse_into(fused, [(weights, 0.7)])

    for name in ("to_q", "to_k"):
        got = getattr(fused.transformer_blocks[0].attn1, name)
        assert type(got) is torch.nn.Linear  # the sum in its weight, no adapter left
        assert torch.allclose(got(x), getattr(side.transformer_blocks[0].attn1, name)(x), atol=1e-4)


def test_a_lora_for_a_layer_the_model_lacks_changes_nothing(tmp_path):
    weights = lora.read_lora(write_lora(tmp_path / "l.safetensors", {"transformer_blocks.0.attn1.to_q": (32, 32)}))
    model = small_model()
    with pytest.raises(lora.NoSuchLayer, match="as 32->32, but it is 16->16 here"):
        lora.attach(model, [(weights, 1.0)])
    assert isinstance(model.transformer_blocks[0].attn1.to_q, torch.nn.Linear)


def test_provenance_changes_name_the_model_the_loras_and_the_portal():
    model = ModelUsed(id="demo", kind="demo", version="2.0", variant="dev", revision="aaaa")
    then = Provenance("0.1.0", model, (LoraUsed("p", 1.0, "1" * 64, 10), LoraUsed("gone", 1.0, "2" * 64, 10)))
    now = Provenance("0.2.0", msgspec.structs.replace(model, revision="bbbb"), (LoraUsed("p", 1.0, "3" * 64, 10),))

    assert changes(then, then) == []
    assert changes(then, now) == [
        "model 'demo''s files changed since (revision aaaa -> bbbb)",
        "LoRA 'p''s file changed since (sha256 111111111111 -> 333333333333)",
        "LoRA 'gone' is no longer in the library",
        "the portal was 0.1.0, now 0.2.0",
    ]


def test_a_models_revision_changes_with_its_ltx_2_5_parts_and_not_with_files_beside_them(tmp_path):
    model = tmp_path / "model"
    (model / "transformer").mkdir(parents=True)
    (model / "transformer" / "config.json").write_text("{}")
    first = model_revision(model)
    (model / "notes").mkdir()
    (model / "notes" / "config.json").write_text("{}")
    assert model_revision(model) == first, "a folder no model part lives in is not the model"
    for part in ("transformer_full", "diffusion_decoder", "duration_head", "prompt_enhancer"):
        (model / part).mkdir()
        (model / part / "config.json").write_text(f'{{"part": "{part}"}}')
        assert model_revision(model) != first, part
        first = model_revision(model)


def test_no_fp8_layer_is_left_unselected_by_the_name_rule():
    """The wrapped names keep the FP8 rule's view: a LowRank's base is named `<layer>.base`, never selected twice."""
    assert is_fp8_layer("transformer_blocks.0.attn1.to_q")
    assert not is_fp8_layer("transformer_blocks.0.attn1.to_q.base")


def test_the_command_line_takes_loras_as_name_and_scale(capsys):
    from avportal.cli import build_parser, main

    args = build_parser().parse_args(["generate", "a purple ball", "--lora", "demo-huge:0.8", "--lora", "other"])
    assert args.loras == [{"name": "demo-huge", "scale": 0.8}, {"name": "other"}]
    with pytest.raises(SystemExit) as refused:
        main(["generate", "a ball", "--lora", "demo-huge:lots"])
    assert refused.value.code == 2 and "the scale 'lots' is not a number" in capsys.readouterr().err


def test_a_dev_model_with_a_distilled_lora_gets_fast_mode_with_the_lora_on_stage_2_alone(demo_model_dir, tmp_path):
    """The demo without its transformer_distilled/, but with a LoRA holding (distilled - dev) of the first block's
    to_q at full rank: fast mode is offered, and the runner applies that LoRA in the refine only."""
    import shutil
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from contract.models import directory_spec
    from gpu_runner.families.ltx2 import LORA_GROUPS, Ltx2
    from gpu_runner.families.ltx2.loading import DiffusersDirectory

    model = shutil.copytree(demo_model_dir, tmp_path / "dev", ignore=shutil.ignore_patterns("transformer_distilled"))
    dev, distilled = (
        load_file(str(demo_model_dir / part / "diffusion_pytorch_model.safetensors"))
        for part in ("transformer", "transformer_distilled")
    )
    name = "transformer_blocks.0.attn1.to_q"
    difference = distilled[f"{name}.weight"].float() - dev[f"{name}.weight"].float()
    u, s, vh = torch.linalg.svd(difference)
    tensors = {
        f"transformer.{name}.lora_A.weight": vh.contiguous(),
        f"transformer.{name}.lora_B.weight": (u * s).contiguous(),
    }
    save_file(tensors, str(model / "demo-distilled-lora-192.safetensors"))

    assert directory_spec("demo", model).modes == ("fast", "quality")
    source = DiffusersDirectory(model)
    assert source.fast_lora() == model / "demo-distilled-lora-192.safetensors"
    transformer = source.load_transformer(torch.float32, "fp32", torch.device("cpu"))
    job = SimpleNamespace(file=SimpleNamespace(loras=()))
    Ltx2(source).attach_loras(transformer, job, torch.float32, fast=True)

    layer = transformer.transformer_blocks[0].attn1.to_q
    x = torch.randn(2, layer.in_features)
    assert layer.active == ()  # stage 1: the dev transformer as it is
    assert torch.allclose(layer(x), layer.base(x))
    lora.activate(transformer, LORA_GROUPS["refine"])
    # the distilled layer's weight; a LoRA leaves the bias as it is (the dev model's)
    want = torch.nn.functional.linear(x, distilled[f"{name}.weight"].float(), dev[f"{name}.bias"].float())
    assert layer.active == ("distilled",) and torch.allclose(layer(x), want, atol=1e-4)

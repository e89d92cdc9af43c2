"""
load_weights.py: round trips, position-embedding resizing, METER's layout, and every bad-input case
(the README's weights table): a clear one-line error naming the file and key, and a model left untouched.

    python -m pytest -q tests/test_load_weights.py
"""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from checkpoints import save_model
from load_weights import (clip_table, initialise_encoders, load_clip, load_meter, load_text, meter_table,
                          resize_position_embedding, roberta_table)
from model import CONFIGS, ClipVision, build_model

REPO = Path(__file__).resolve().parents[1]
CFG = replace(CONFIGS["tiny"], image_size=32, patch_size=8, num_answers=5, vocab_size=60)  # a 4 x 4 grid


def inputs(cfg=CFG):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=generator)
    input_ids = torch.tensor([[0, 7, 8, 9, 2], [0, 10, 2, 1, 1]])
    return pixels, input_ids, (input_ids != 1).long()


def meter_state(model):
    """Our tensors under METER's names (the inverse of load_weights' table, built from it)."""
    state = {}
    ours = model.state_dict()
    for our_name, their_name, transform in meter_table(model.cfg):
        if their_name.endswith("in_proj_weight") or their_name.endswith("in_proj_bias"):
            kind = "weight" if their_name.endswith("weight") else "bias"
            block = our_name.split(".attention.")[0]
            state[their_name] = torch.cat([ours[f"{block}.attention.{part}.{kind}"] for part in ("query", "key", "value")])
        elif our_name in ours:
            state[their_name] = ours[our_name].clone()
    return state


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "load_weights.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_project_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(replace(CFG, arch=arch)).eval()
    save_model(model, tmp_path / "model.safetensors", {"step": "12"})
    loaded = load_meter(tmp_path / "model.safetensors", verbose=False).eval()
    assert loaded.cfg == model.cfg and type(loaded) is type(model)
    with torch.no_grad():
        for name, value in model(*inputs()).items():
            assert torch.equal(value, loaded(*inputs())[name])


def test_new_image_size_and_new_answers(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(CFG)
    save_model(model, tmp_path / "model.safetensors")
    bigger = load_meter(tmp_path / "model.safetensors", image_size=64, num_answers=9)
    printed = capsys.readouterr().out
    assert "resized: vision.embeddings.position_embedding 17 -> 65 rows" in printed
    assert "freshly initialised: vqa_head" in printed
    assert bigger.cfg.image_size == 64 and bigger.vqa_head.classifier.out_features == 9
    old, new = model.vision.embeddings.position_embedding, bigger.vision.embeddings.position_embedding
    assert torch.equal(old[0], new[0]), "the class position row is kept as it is"
    assert torch.equal(bigger.text.embeddings.word.weight, model.text.embeddings.word.weight)
    with torch.no_grad():
        assert bigger(*inputs(bigger.cfg))["cls_feats"].shape == (2, 256)


def test_resize_is_bicubic_on_the_grid():
    grid = torch.arange(16.0).reshape(4, 4)
    positions = torch.cat([torch.full((1, 1), -1.0), grid.reshape(16, 1)])  # [1+16, 1]
    resized = resize_position_embedding(positions, 64)
    assert resized.shape == (65, 1) and resized[0, 0] == -1.0
    expected = torch.nn.functional.interpolate(grid[None, None], size=(8, 8), mode="bicubic", align_corners=False)
    assert torch.allclose(resized[1:, 0], expected.flatten())
    assert resize_position_embedding(positions, 16) is positions


def test_official_meter_layout_with_extra_keys(tmp_path, capsys):
    torch.manual_seed(0)
    # the head count is no weight's shape: the loader takes METER's 64 per head, so this model has them too
    model = build_model(replace(CFG, fusion_heads=CFG.hidden_size // 64)).eval()
    state = meter_state(model)
    state["vit_model.token_embedding.weight"] = torch.zeros(3, 4)     # CLIP's text tower
    state["vit_model.ln_final.weight"] = torch.ones(4)
    state["text_transformer.pooler.dense.weight"] = torch.zeros(2, 2)
    state["text_transformer.embeddings.position_ids"] = torch.arange(4)[None]
    del state["itm_score.fc.weight"], state["itm_score.fc.bias"]       # a VQA checkpoint has no ITM head
    save_file(state, tmp_path / "meter.safetensors")
    loaded = load_meter(tmp_path / "meter.safetensors").eval()
    printed = capsys.readouterr().out
    assert "meter layout" in printed and "freshly initialised: itm_head.weight, itm_head.bias" in printed
    assert "vit_model.token_embedding.weight" in printed and "text_transformer.embeddings.position_ids" in printed
    with torch.no_grad():
        assert torch.allclose(loaded(*inputs())["cls_feats"], model(*inputs())["cls_feats"], atol=1e-6)


def test_vilt_starts_from_clip_and_klue(tmp_path):
    torch.manual_seed(0)
    donor = build_model(replace(CFG, vision_layers=4))  # a 4-block CLIP = the ViLT tiny stream
    save_file({f"vision_model.{key}": value for key, value in hf_clip_names(donor.vision).items()},
              tmp_path / "clip.safetensors")
    save_file(hf_roberta_names(donor.text), tmp_path / "text.safetensors")
    vilt = build_model(replace(CFG, arch="vilt"))
    initialise_encoders(vilt, tmp_path / "clip.safetensors", tmp_path / "text.safetensors", verbose=False)
    assert torch.equal(vilt.blocks[3].mlp_in.weight, donor.vision.blocks[3].mlp_in.weight)
    assert torch.equal(vilt.norm.weight, donor.vision.post_norm.weight)
    assert torch.equal(vilt.vision.patch.weight, donor.vision.embeddings.patch.weight)
    assert torch.equal(vilt.text.word.weight, donor.text.embeddings.word.weight)


def hf_clip_names(vision):
    """Our ClipVision -> Hugging Face names (the reverse of the table, for making test files)."""
    ours = vision.state_dict()
    return {theirs: ours[name].clone() for name, theirs, _ in clip_table("hf", "", len(vision.blocks))}


def hf_roberta_names(text):
    ours = text.state_dict()
    return {theirs: ours[name].clone() for name, theirs, _ in roberta_table("", len(text.layers))}


# -----------------------------------------------------------------------------
# Bad input: one clear line, nothing half-loaded.

def test_not_safetensors_and_truncated(tmp_path):
    vision = ClipVision(CFG)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not a readable safetensors file"):
        load_clip(vision, tmp_path / "notes.txt")
    save_file(hf_clip_names(vision), tmp_path / "clip.safetensors")
    data = (tmp_path / "clip.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors: not a readable safetensors file"):
        load_clip(vision, tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such file"):
        load_clip(vision, tmp_path / "missing.safetensors")


def test_wrong_kind_of_file(tmp_path):
    model = build_model(CFG)
    save_file(hf_roberta_names(model.text), tmp_path / "text.safetensors")
    save_file(hf_clip_names(model.vision), tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="expected a CLIP checkpoint, found a roberta checkpoint"):
        load_clip(model.vision, tmp_path / "text.safetensors")
    with pytest.raises(ValueError, match="expected a RoBERTa checkpoint, found a clip-hf checkpoint"):
        load_text(model.text, tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="expected a Ko-METER or METER checkpoint, found a roberta"):
        load_meter(tmp_path / "text.safetensors")
    save_file({"some.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="unknown checkpoint layout.*some.weight"):
        load_meter(tmp_path / "other.safetensors")


def test_shape_mismatch_and_missing_key_change_nothing(tmp_path):
    vision = ClipVision(CFG)
    before = {name: value.clone() for name, value in vision.state_dict().items()}
    state = hf_clip_names(ClipVision(CFG))
    state["encoder.layers.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "bad_shape.safetensors")
    with pytest.raises(ValueError, match=r"encoder.layers.1.mlp.fc1.weight has shape \(3, 3\) but "
                                         r"blocks.1.mlp_in.weight needs \(512, 128\)"):
        load_clip(vision, tmp_path / "bad_shape.safetensors")
    state = hf_clip_names(ClipVision(CFG))
    del state["post_layernorm.weight"]
    save_file(state, tmp_path / "missing_key.safetensors")
    with pytest.raises(ValueError, match="missing 1 required keys for the clip-hf layout: post_layernorm.weight"):
        load_clip(vision, tmp_path / "missing_key.safetensors")
    for name, value in vision.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a failed load"


def test_inspect_and_convert_commands(tmp_path):
    model = build_model(CFG)
    save_model(model, tmp_path / "model.safetensors")
    result = run_cli("inspect", tmp_path / "model.safetensors")
    assert result.returncode == 0 and "layout: ko-meter" in result.stdout and "fusion" in result.stdout
    torch.save({"state_dict": meter_state(model), "epoch": 3, "hyper_parameters": {"lr": 1e-5}},
               tmp_path / "meter.ckpt")
    result = run_cli("convert", tmp_path / "meter.ckpt", tmp_path / "meter.safetensors")
    assert result.returncode == 0, result.stderr
    result = run_cli("inspect", tmp_path / "meter.safetensors")
    assert "layout: meter" in result.stdout and '"fusion_layers": 2' in result.stdout
    torch.save({"weights": torch.zeros(2), "code": Path("x")}, tmp_path / "evil.pt")
    result = run_cli("convert", tmp_path / "evil.pt", tmp_path / "evil.safetensors")
    assert result.returncode != 0 and "would run code" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    result = run_cli("inspect", tmp_path / "junk.safetensors")
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_inspect_names_the_keys_a_file_lacks(tmp_path):
    state = {f"vision_model.{key}": value for key, value in hf_clip_names(build_model(CFG).vision).items()}
    del state["vision_model.embeddings.position_embedding.weight"]
    save_file(state, tmp_path / "clip.safetensors")
    result = run_cli("inspect", tmp_path / "clip.safetensors")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'clip.safetensors'}: clip-hf layout, but missing 1 key "
                                          "its layout needs: vision_model.embeddings.position_embedding.weight"]

"""Tests of the encoder stage, pretrain_encoders.py (CPU, seconds): the contrastive loss against a written-out
reference; a short run writes Hugging Face CLIP vision and RoBERTa files that load_clip / load_text read back into
encoders giving the stage's own features, and that transformers' CLIPVisionModel / RobertaModel load with no
missing key and run to the same numbers; the flags and the refusal of micro-batches.

    python -m pytest -q tests/test_pretrain_encoders.py
"""

import json
import math
from dataclasses import replace

import pytest
import torch

import data
import demo_data
import finetune
import pretrain
import pretrain_encoders
from load_weights import initialise_encoders, load_clip, load_text, save_clip_vision, save_roberta
from model import CONFIGS, ClipVision, RobertaText, build_model

FLAGS = ["--config", "tiny", "--batch", "8", "--steps", "4", "--max-len", "40", "--log-every", "2",
         "--eval-every", "2", "--save-every", "4", "--workers", "0"]


def test_contrastive_loss_is_clips_symmetric_cross_entropy():
    """Against CLIP's loss written out element by element: cosines times the scale, then for every image the
    -log of its own text's share of exp over the texts, and for every text the same over the images."""
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    texts[3] = images[3] * 2  # one pair that points the same way
    log_scale = torch.tensor(math.log(10.0))
    out = pretrain.contrastive_loss(images, texts, log_scale)

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    rows = [[10.0 * cosine(image.tolist(), text.tolist()) for text in texts] for image in images]
    image_to_text = [-rows[i][i] + math.log(sum(math.exp(value) for value in rows[i])) for i in range(5)]
    text_to_image = [-rows[j][j] + math.log(sum(math.exp(rows[i][j]) for i in range(5))) for j in range(5)]
    expected = (sum(image_to_text) / 5 + sum(text_to_image) / 5) / 2
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert out["image_to_text_correct"] == sum(max(range(5), key=lambda j: rows[i][j]) == i for i in range(5))
    assert out["text_to_image_correct"] == sum(max(range(5), key=lambda i: rows[i][j]) == j for j in range(5))
    capped = pretrain.contrastive_loss(images, texts, torch.tensor(math.log(1000.0)))  # CLIP caps the scale at 100
    assert capped["loss"].item() == pytest.approx(pretrain.contrastive_loss(
        images, texts, torch.tensor(math.log(100.0)))["loss"].item())


def test_matched_pairs_lower_the_loss_and_it_learns():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(8, 16, generator=generator)
    scale = torch.tensor(math.log(1 / 0.07))
    assert (pretrain.contrastive_loss(images, images, scale)["loss"]
            < pretrain.contrastive_loss(images, torch.randn(8, 16, generator=generator), scale)["loss"])
    assert pretrain.contrastive_loss(images, images, scale)["image_to_text_correct"] == 8


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A 4-step encoder stage on a tiny demo set."""
    root = tmp_path_factory.mktemp("encoders")
    paths = demo_data.make_demo(str(root / "demo_data"), caption_images=40, vqa_train_images=4, vqa_dev_images=2,
                                image_size=64, vocab_size=200)
    model = pretrain_encoders.train(pretrain_encoders.parse_args(
        ["--captions", paths["captions"], "--images", paths["images"], "--tokenizer", paths["tokenizer"], *FLAGS,
         "--out", str(root / "encoders")]))
    return root / "encoders", model.eval(), paths


def sample_inputs(paths, image_size=64):
    tokenizer = data.Tokenizer.load(paths["tokenizer"])
    input_ids, attention_mask = tokenizer.encode(["빨간색 원이 있다.", "왼쪽 위에는 큰 파란색 사각형이 있다."], 40)
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(2))
    return pixels, input_ids, attention_mask


def test_stage_writes_the_real_layouts_and_its_curve(stage):
    out, model, paths = stage
    for name in ["clip/model.safetensors", "clip/config.json", "roberta/model.safetensors", "roberta/config.json",
                 "roberta/tokenizer.json", "model.safetensors", "metrics.jsonl", "curves.png"]:
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [row for row in rows if row["split"] == "val"]
    assert [row["step"] for row in val] == [2, 4]
    assert all(0 <= row["image_to_text_acc"] <= 1 and 0 <= row["text_to_image_acc"] <= 1 for row in val)
    assert {"loss", "image_to_text_acc", "text_to_image_acc", "scale"} <= set(rows[0])
    assert len(model.vision.blocks) == CONFIGS["tiny"].vision_layers  # all of them kept by Ko-METER


def test_saved_encoders_load_through_load_clip_and_load_text_with_the_same_features(stage):
    out, model, paths = stage
    pixels, input_ids, attention_mask = sample_inputs(paths)
    cfg = replace(CONFIGS["tiny"], vocab_size=model.cfg.vocab_size)
    vision, text = ClipVision(cfg).eval(), RobertaText(cfg).eval()
    clip_report = load_clip(vision, out / "clip" / "model.safetensors", verbose=False)
    text_report = load_text(text, out / "roberta" / "model.safetensors", verbose=False)
    assert not clip_report.ignored and not clip_report.initialised and clip_report.layout == "clip-hf"
    assert not text_report.ignored and not text_report.initialised and text_report.layout == "roberta"
    with torch.no_grad():
        assert torch.equal(vision(pixels), model.vision(pixels))
        assert torch.equal(text(input_ids, attention_mask), model.text(input_ids, attention_mask))
    vilt = build_model(replace(cfg, arch="vilt"))  # a 4-block stream: the file's 2 blocks, then 2 fresh ones
    fresh = vilt.blocks[3].mlp_in.weight.clone()
    initialise_encoders(vilt, out / "clip" / "model.safetensors", out / "roberta" / "model.safetensors", verbose=False)
    assert torch.equal(vilt.blocks[1].mlp_in.weight, model.vision.blocks[1].mlp_in.weight)
    assert torch.equal(vilt.blocks[3].mlp_in.weight, fresh)
    assert torch.equal(vilt.text.word.weight, model.text.embeddings.word.weight)


def test_transformers_loads_the_files_with_no_missing_key(stage):
    transformers = pytest.importorskip("transformers", reason="transformers is the test-only oracle; "
                                       "pip install transformers to run this check")
    out, model, paths = stage
    pixels, input_ids, attention_mask = sample_inputs(paths)
    clip, clip_info = transformers.CLIPVisionModel.from_pretrained(out / "clip", output_loading_info=True,
                                                                   attn_implementation="eager")
    roberta, roberta_info = transformers.RobertaModel.from_pretrained(out / "roberta", output_loading_info=True,
                                                                      add_pooling_layer=False, attn_implementation="eager")
    for info in (clip_info, roberta_info):
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        hidden = clip.eval()(pixel_values=pixels).last_hidden_state
        assert torch.allclose(clip.post_layernorm(hidden), model.vision(pixels), atol=1e-5)  # METER: ln_post on all
        text = roberta.eval()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        real = attention_mask.bool()
        assert torch.allclose(text[real], model.text(input_ids, attention_mask)[real], atol=1e-5)


def test_save_functions_write_what_they_read(tmp_path):
    torch.manual_seed(3)
    cfg = replace(CONFIGS["tiny"], vocab_size=60)
    vision, text = ClipVision(cfg), RobertaText(cfg)
    clip_path = save_clip_vision(vision, tmp_path / "clip", cfg.image_size)
    text_path = save_roberta(text, tmp_path / "roberta")
    config = json.loads((tmp_path / "clip" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["patch_size"]) == (128, 2, cfg.patch_size)
    copy_vision, copy_text = ClipVision(cfg), RobertaText(cfg)
    load_clip(copy_vision, clip_path, verbose=False)
    load_text(copy_text, text_path, verbose=False)
    for original, copy in ((vision, copy_vision), (text, copy_text)):
        for name, value in original.state_dict().items():
            assert torch.equal(value, copy.state_dict()[name]), name


def test_flags_and_micro_batches_refused(stage, capsys):
    _, _, paths = stage
    with pytest.raises(SystemExit):
        pretrain_encoders.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "CLIP" in help_text and "RoBERTa" in help_text and "--captions" in help_text and "--config" in help_text
    args = pretrain_encoders.parse_args(["--captions", paths["captions"], "--images", paths["images"], "--tokenizer",
                                         paths["tokenizer"], *FLAGS, "--micro-batch", "4", "--out", "unused"])
    with pytest.raises(ValueError, match="cannot be split into micro-batches"):
        pretrain_encoders.train(args)


def test_demo_recipes_start_from_the_stage_output():
    """pretrain.py's and finetune.py's --demo take --clip / --text from where pretrain_encoders.py --demo writes."""
    for world in ("shapes", "bars"):
        suffix = demo_data.world_suffix(world)
        out = pretrain_encoders.ENCODER_DEMO_DEFAULTS["out"] + suffix
        for recipe in (pretrain.PRETRAIN_DEMO_DEFAULTS, finetune.FINETUNE_DEMO_DEFAULTS):
            assert recipe["clip"].format(world=suffix) == f"{out}/clip/model.safetensors"
            assert recipe["text"].format(world=suffix) == f"{out}/roberta/model.safetensors"

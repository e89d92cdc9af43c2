"""
Parity of model.py with Hugging Face `transformers` as a numerical oracle, on random weights saved in the
real key layouts (Hugging Face CLIP and RoBERTa, OpenAI CLIP, METER), plus the attention fast path and dropout placement.

    python -m pytest -q tests/test_model.py
"""

import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from load_weights import load_clip, load_meter, load_text
from model import CONFIGS, Attention, ClipVision, RobertaText, build_model, no_weight_decay, part_of
from training import compile_layers, recompute_layers

transformers = pytest.importorskip("transformers", reason="transformers is the test-only oracle; "
                                   "pip install transformers to run the parity tests")

TOLERANCE = 1e-5
WIDTH, HEADS, PATCH, IMAGE, LAYERS = 128, 2, 8, 32, 3  # the file has 3 CLIP blocks; the model uses 2 (as 11 of 12)
CFG = replace(CONFIGS["tiny"], image_size=IMAGE, patch_size=PATCH, vision_layers=LAYERS - 1, vocab_size=100,
              fusion_layers=2, num_answers=7, dropout=0.1)  # dropout as in RoBERTa: the tests check where it acts


def scramble(module, seed):
    """Random values everywhere (LayerNorms and biases too), so that no parameter is checked at its init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + (param == 1).float())
    return module.eval()


def hf_clip():
    config = transformers.CLIPVisionConfig(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_attention_heads=HEADS,
                                           num_hidden_layers=LAYERS, image_size=IMAGE, patch_size=PATCH,
                                           attn_implementation="eager")
    return scramble(transformers.CLIPVisionModel(config), seed=1)


def hf_roberta(masked_lm=False):
    config = transformers.RobertaConfig(vocab_size=100, hidden_size=WIDTH, num_hidden_layers=2,
                                        num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                                        max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                                        layer_norm_eps=1e-5, attn_implementation="eager")
    model = transformers.RobertaForMaskedLM(config) if masked_lm else transformers.RobertaModel(config)
    return scramble(model, seed=2)


def clip_reference(clip, pixels):
    """What METER's encoder returns: the hidden state after all but the last block, ln_post on every token."""
    hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states[LAYERS - 1]
    return clip.post_layernorm(hidden)


def to_openai_names(hf_state, prefix):
    """Hugging Face CLIP vision names -> OpenAI's (fused in_proj), written independently of load_weights."""
    out = {}
    renames = {"embeddings.patch_embedding.weight": "conv1.weight", "embeddings.class_embedding": "class_embedding",
               "embeddings.position_embedding.weight": "positional_embedding", "pre_layrnorm": "ln_pre",
               "post_layernorm": "ln_post"}
    for key, value in hf_state.items():
        if key.startswith("encoder.layers."):
            _, _, block, rest = key.split(".", 3)
            if ".q_proj." in rest:
                kind = rest.rsplit(".", 1)[1]
                fused = torch.cat([hf_state[f"encoder.layers.{block}.self_attn.{name}_proj.{kind}"]
                                   for name in "qkv"])
                out[f"{prefix}transformer.resblocks.{block}.attn.in_proj_{kind}"] = fused
                continue
            if ".k_proj." in rest or ".v_proj." in rest:
                continue
            rest = (rest.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
                    .replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj"))
            out[f"{prefix}transformer.resblocks.{block}.{rest}"] = value
            continue
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[prefix + key] = value
    return out


def save_state(state, path):
    """Like a real checkpoint file: every tensor stored on its own (tied weights are saved twice)."""
    save_file({key: value.clone().contiguous() for key, value in state.items()}, path)


def pixels_and_text():
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    input_ids = torch.tensor([[0, 11, 12, 13, 14, 2], [0, 21, 22, 2, 1, 1]])  # the second one is padded
    return pixels, input_ids, (input_ids != 1).long()


@pytest.mark.parametrize("layout", ["hf", "hf-bare", "openai"])
def test_vision_matches_clip_after_11_of_12_blocks(tmp_path, layout):
    clip = hf_clip()
    state = dict(clip.state_dict())  # CLIPVisionModel's names, without CLIPModel's "vision_model." prefix
    if layout == "openai":
        state = to_openai_names(state, "visual.")
        state["token_embedding.weight"] = torch.zeros(3, 4)  # CLIP's text tower: ignored, reported
    elif layout == "hf":  # as in openai/clip-vit-base-patch16's model.safetensors (a whole CLIPModel)
        state = {f"vision_model.{key}": value for key, value in state.items()}
        state.update({"logit_scale": torch.tensor(2.0), "text_model.embeddings.token_embedding.weight": torch.zeros(3, 4),
                      "visual_projection.weight": torch.zeros(4, WIDTH)})
    save_state(state, tmp_path / "clip.safetensors")
    vision = ClipVision(CFG).eval()
    report = load_clip(vision, tmp_path / "clip.safetensors", verbose=False)
    assert any(".2." in key for key in report.ignored), "the last block of the file must be ignored"
    assert not report.initialised
    pixels, _, _ = pixels_and_text()
    with torch.no_grad():
        difference = (vision(pixels) - clip_reference(clip, pixels)).abs().max().item()
    print(f"vision ({layout} layout) max abs difference {difference:.2e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("masked_lm", [False, True])
def test_text_matches_roberta_on_a_padded_batch(tmp_path, masked_lm):
    roberta = hf_roberta(masked_lm)
    save_state(roberta.state_dict(), tmp_path / "text.safetensors")
    text = RobertaText(CFG).eval()
    report = load_text(text, tmp_path / "text.safetensors", verbose=False)
    assert not report.initialised
    if masked_lm:
        assert any(key.startswith("lm_head.") for key in report.ignored)
    _, input_ids, attention_mask = pixels_and_text()
    encoder = roberta.roberta if masked_lm else roberta
    with torch.no_grad():
        expected = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        ours = text(input_ids, attention_mask)
    real = attention_mask.bool()
    difference = (ours[real] - expected[real]).abs().max().item()
    print(f"text max abs difference {difference:.2e}")
    assert difference <= TOLERANCE


class MeterReference(torch.nn.Module):
    """METER's fusion built from transformers' BERT layer with cross-attention, under METER's names."""

    def __init__(self):
        super().__init__()
        bert = transformers.BertConfig(hidden_size=WIDTH, num_attention_heads=HEADS, intermediate_size=4 * WIDTH,
                                       is_decoder=True, add_cross_attention=True, layer_norm_eps=1e-12,
                                       attn_implementation="eager")
        self.cross_modal_text_transform = torch.nn.Linear(WIDTH, WIDTH)
        self.cross_modal_image_transform = torch.nn.Linear(WIDTH, WIDTH)
        self.token_type_embeddings = torch.nn.Embedding(2, WIDTH)
        self.cross_modal_text_layers = torch.nn.ModuleList(
            transformers.models.bert.modeling_bert.BertLayer(bert) for _ in range(2))
        self.cross_modal_image_layers = torch.nn.ModuleList(
            transformers.models.bert.modeling_bert.BertLayer(bert) for _ in range(2))
        self.cross_modal_text_pooler = transformers.models.bert.modeling_bert.BertPooler(bert)
        self.cross_modal_image_pooler = transformers.models.bert.modeling_bert.BertPooler(bert)
        self.mlm_score = transformers.models.bert.modeling_bert.BertLMPredictionHead(
            transformers.BertConfig(**{**bert.to_dict(), "vocab_size": 100}))
        self.mlm_score.decoder.bias = self.mlm_score.bias  # METER: decoder without bias, plus one bias vector
        self.itm_score = torch.nn.Module()
        self.itm_score.fc = torch.nn.Linear(2 * WIDTH, 2)
        self.vqa_classifier = torch.nn.Sequential(torch.nn.Linear(2 * WIDTH, 2 * WIDTH),
                                                  torch.nn.LayerNorm(2 * WIDTH), torch.nn.GELU(),
                                                  torch.nn.Linear(2 * WIDTH, 7))

    def forward(self, image_hidden, text_hidden, attention_mask):
        text = self.cross_modal_text_transform(text_hidden) + self.token_type_embeddings.weight[0]
        image = self.cross_modal_image_transform(image_hidden) + self.token_type_embeddings.weight[1]
        text_mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        image_mask = torch.zeros(image.shape[0], 1, 1, image.shape[1])
        for text_layer, image_layer in zip(self.cross_modal_text_layers, self.cross_modal_image_layers):
            text, image = (text_layer(text, text_mask, encoder_hidden_states=image, encoder_attention_mask=image_mask),
                           image_layer(image, image_mask, encoder_hidden_states=text, encoder_attention_mask=text_mask))
        cls_feats = torch.cat([self.cross_modal_text_pooler(text), self.cross_modal_image_pooler(image)], dim=-1)
        return {"text_feats": text, "image_feats": image, "cls_feats": cls_feats, "mlm": self.mlm_score(text),
                "itm": self.itm_score.fc(cls_feats), "vqa": self.vqa_classifier(cls_feats)}


def test_fusion_and_heads_match_bert_cross_attention(tmp_path):
    clip, roberta, fusion = hf_clip(), hf_roberta(), scramble(MeterReference(), seed=4)
    state = to_openai_names(clip.state_dict(), "vit_model.visual.")
    state.update({f"text_transformer.{key}": value for key, value in roberta.state_dict().items()})
    state.update(fusion.state_dict())
    save_state(state, tmp_path / "meter.safetensors")
    model = load_meter(tmp_path / "meter.safetensors", verbose=False).eval()
    assert model.cfg.vision_layers == LAYERS and model.cfg.num_answers == 7 and model.cfg.vocab_size == 100
    pixels, input_ids, attention_mask = pixels_and_text()
    with torch.no_grad():
        image_hidden = clip.post_layernorm(clip(pixel_values=pixels, output_hidden_states=True)
                                           .hidden_states[LAYERS])
        text_hidden = roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        expected = fusion(image_hidden, text_hidden, attention_mask)
        ours = model(pixels, input_ids, attention_mask)
        ours["mlm"] = model.mlm_head(ours["text_feats"])
        ours["itm"] = model.itm_head(ours["cls_feats"])
        ours["vqa"] = model.vqa_head(ours["cls_feats"])
    real = attention_mask.bool()
    for name in ("text_feats", "mlm"):
        ours[name], expected[name] = ours[name][real], expected[name][real]
    for name in ("text_feats", "image_feats", "cls_feats", "mlm", "itm", "vqa"):
        difference = (ours[name] - expected[name]).abs().max().item()
        print(f"{name} max abs difference {difference:.2e}")
        assert difference <= TOLERANCE, name


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_fast_attention_matches_written_out(masked, cross):
    torch.manual_seed(0)
    fast, written_out = Attention(64, 4, fast=True), Attention(64, 4, fast=False)
    written_out.load_state_dict(fast.state_dict())
    x, context = torch.randn(3, 5, 64), torch.randn(3, 7, 64) if cross else None
    keys = 7 if cross else 5
    key_mask = (torch.arange(keys)[None, :] < torch.tensor([[keys], [3], [1]])) if masked else None
    difference = (fast(x, context, key_mask) - written_out(x, context, key_mask)).abs().max().item()
    assert difference <= TOLERANCE


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_whole_model_fast_and_written_out_agree(arch):
    torch.manual_seed(0)
    cfg = replace(CFG, arch=arch)
    fast = build_model(cfg).eval()
    written_out = build_model(replace(cfg, fast_attention=False)).eval()
    written_out.load_state_dict(fast.state_dict())
    pixels, input_ids, attention_mask = pixels_and_text()
    with torch.no_grad():
        for name, value in fast(pixels, input_ids, attention_mask).items():
            assert (value - written_out(pixels, input_ids, attention_mask)[name]).abs().max() <= TOLERANCE


def test_dropout_in_text_and_fusion_not_in_clip():
    torch.manual_seed(0)
    model = build_model(CFG).train()
    pixels, input_ids, attention_mask = pixels_and_text()
    assert torch.equal(model.vision(pixels), model.vision(pixels)), "CLIP has no dropout"
    assert not torch.equal(model.text(input_ids, attention_mask), model.text(input_ids, attention_mask))
    text_hidden, image_hidden = model.text(input_ids, attention_mask), model.vision(pixels)
    first = model.fuse(text_hidden, attention_mask, image_hidden)["cls_feats"]
    assert not torch.equal(first, model.fuse(text_hidden, attention_mask, image_hidden)["cls_feats"])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels, input_ids, attention_mask)["cls_feats"],
                           model(pixels, input_ids, attention_mask)["cls_feats"])


def test_parts_cover_every_parameter_and_no_decay_rules():
    model = build_model(CFG)
    parts = {part_of(name) for name, _ in model.named_parameters()}
    assert parts == {"vision", "text", "fusion", "heads"}
    assert part_of("text_layers.0.ffn_in.weight") == "fusion"
    assert part_of("vqa_head.dense.weight") == "heads"
    assert no_weight_decay("vision.embeddings.position_embedding")
    assert no_weight_decay("vqa_head.norm.weight") and no_weight_decay("mlm_head.bias")
    assert not no_weight_decay("text.embeddings.word.weight")
    assert not no_weight_decay("text_layers.0.self_attention.query.weight")


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_layers_match_eager():
    torch.manual_seed(0)
    cfg = replace(CFG, vision_layers=1, text_layers=1, fusion_layers=1)  # one layer of each kind: a short compile
    eager = build_model(cfg).eval()
    compiled = build_model(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    compile_layers(compiled)
    pixels, input_ids, attention_mask = pixels_and_text()
    with torch.no_grad():
        expected, ours = eager(pixels, input_ids, attention_mask), compiled(pixels, input_ids, attention_mask)
    for name in expected:
        difference = (ours[name] - expected[name]).abs().max().item()
        print(f"compiled {name} max abs difference {difference:.2e}")
        assert difference <= TOLERANCE, name


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_recomputed_layers_give_the_same_gradients(arch):
    """--recompute keeps only each layer's input and reruns the layer in the backward pass; dropout is replayed
    with the same random state, so the gradients equal those of a plain backward pass."""
    torch.manual_seed(0)
    plain = build_model(replace(CFG, arch=arch)).train()
    recomputed = build_model(replace(CFG, arch=arch)).train()
    recomputed.load_state_dict(plain.state_dict())
    recompute_layers(recomputed)
    pixels, input_ids, attention_mask = pixels_and_text()
    gradients = []
    for model in (plain, recomputed):
        torch.manual_seed(1)  # the same dropout masks in both forward passes
        model(pixels, input_ids, attention_mask)["cls_feats"].square().sum().backward()
        gradients.append({name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None})
    assert gradients[0].keys() == gradients[1].keys()
    for name in gradients[0]:
        torch.testing.assert_close(gradients[1][name], gradients[0][name], rtol=1e-5, atol=1e-6)

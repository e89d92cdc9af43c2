"""Tests of relevancy.py, the map of `predict.py --explain`, the dev report and the pointing game (CPU, seconds).
The rules against numbers worked out by hand; the whole map of a one-block ViLT and of a one-layer Ko-METER against
the paper's formulas, worked through for that one layer and written out here from the gradients autograd gives.
Each test names the slip it catches.

    python -m pytest -q tests/test_relevancy.py
"""

from dataclasses import replace

import pytest
import torch

import relevancy
from model import CONFIGS, Attention, build_model

TEXT = torch.tensor([[0, 5, 6, 7, 2], [0, 9, 2, 1, 1]])  # KLUE's ids: [CLS] = 0, [SEP] = 2, [PAD] = 1


def scrambled(cfg, seed=0):
    """A tiny model with random values everywhere, so that gradients of both signs flow through every layer."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)  # small enough that no softmax saturates
    return model


def inputs(cfg):
    torch.manual_seed(1)
    return torch.randn(2, 3, cfg.image_size, cfg.image_size), TEXT, (TEXT != cfg.pad_id).long()


def gradients_of_top_answer(model, attentions, pixels, input_ids, attention_mask):
    """{attention: (probabilities, their gradient)} of the top answer's logit, through autograd alone."""
    for attention in attentions:
        attention.keep_probs = True
    logits = model.vqa_head(model(pixels, input_ids, attention_mask)["cls_feats"])
    top = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
    probs = [attention.probs for attention in attentions]
    grads = torch.autograd.grad(top, probs)
    for attention in attentions:
        attention.keep_probs, attention.probs = False, None
    return {attention: (p.detach(), g) for attention, p, g in zip(attentions, probs, grads)}


def weighted(pair):
    """The paper's eq. 5, written out: heads averaged after the positive part of gradient times attention."""
    probs, grad = pair
    return torch.relu(grad * probs).mean(dim=1)


def test_normalised_by_hand():
    """Catches normalising R instead of R - I, and forgetting to put the identity back."""
    r = torch.tensor([[[2.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 3.0, 1.0]]])
    expected = torch.tensor([[[4 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]])  # the middle row: only itself
    torch.testing.assert_close(relevancy.normalised(r), expected)


def test_cross_attention_rule_by_hand():
    """Catches a missing transpose of norm(R_ss) (R_ss is not symmetric here) and R_qs read in place of R_sq."""
    weighted_sq = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]])  # 2 tokens of s over 3 of q
    r_ss = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # norm(r_ss) = r_ss
    r_sq = torch.zeros(1, 2, 3)
    r_qs = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    r_qq = torch.eye(3)[None]
    new_ss, new_sq = relevancy.cross_attention_rule(weighted_sq, r_ss, r_sq, r_qs, r_qq)
    torch.testing.assert_close(new_sq, torch.tensor([[[0.5, 0.5, 1.0], [0.0, 0.0, 1.0]]]))  # [[1, 1], [0, 1]] @ W
    torch.testing.assert_close(new_ss, torch.tensor([[[1.5, 0.0], [1.0, 3.0]]]))  # r_ss + W @ r_qs


def test_one_block_vilt_map_is_the_pooled_tokens_weighted_attention():
    """One block: R = I + Abar, so the map is Abar's row of the pooled token (token 0) over the patches, as shares.
    Catches raw attention in place of gradient times attention, |.| in place of the positive part, the image's
    class token counted as a patch (an offset of one) and another token's row."""
    cfg = replace(CONFIGS["tiny"], arch="vilt", vilt_layers=1, num_answers=5)
    model = scrambled(cfg)
    pixels, input_ids, attention_mask = inputs(cfg)
    pairs = gradients_of_top_answer(model, [model.blocks[0].attention], pixels, input_ids, attention_mask)
    row = weighted(pairs[model.blocks[0].attention])[:, 0, input_ids.shape[1] + 1:]  # [B, T+1+N, T+1+N] -> [B, N]
    _, shares, _ = relevancy.relevancy_maps(model, pixels, input_ids, attention_mask)
    torch.testing.assert_close(shares, row / row.sum(dim=1, keepdim=True))


def test_one_layer_meter_map_by_the_papers_rules():
    """Ko-METER without encoder layers and with one co-attention pair, worked through the rules on paper:
    after the self-attentions R_tt = I + S_t, R_ii = I + S_i (R_ti = R_it = 0); the text cross-attention adds
    norm(I + S_t)^T C_t to R_ti; the image cross-attention reads the text's R_ti of the layer before, zero, so
    R_ii stays I + S_i. The map: R_ti's text [CLS] row plus R_ii's image class-token row, over the patches.
    Catches the image stream reading the text's relevance after this layer's update (the streams run in
    parallel), a missing image class-token row (METER pools both streams) and a missing transpose."""
    # vision_layers, text_layers: the CLIP and RoBERTa depths; fusion_layers: the co-attention pairs
    cfg = replace(CONFIGS["tiny"], vision_layers=0, text_layers=0, fusion_layers=1, num_answers=5)
    model = scrambled(cfg)
    pixels, input_ids, attention_mask = inputs(cfg)
    text_layer, image_layer = model.text_layers[0], model.image_layers[0]
    attentions = [text_layer.self_attention, text_layer.cross_attention, image_layer.self_attention,
                  image_layer.cross_attention]
    pairs = gradients_of_top_answer(model, attentions, pixels, input_ids, attention_mask)
    self_t, cross_t, self_i = (weighted(pairs[attention]) for attention in attentions[:3])
    others = self_t / self_t.sum(dim=-1, keepdim=True).clamp(min=1e-12)  # norm(I + S_t) - I: rows of S_t scaled to 1
    norm_tt = others + torch.eye(self_t.shape[-1])
    r_ti = norm_tt.transpose(1, 2) @ cross_t  # [B, T, 1+N]
    expected = r_ti[:, 0, 1:] + self_i[:, 0, 1:]  # [B, N]
    _, shares, _ = relevancy.relevancy_maps(model, pixels, input_ids, attention_mask)
    torch.testing.assert_close(shares, expected / expected.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_relevancy_leaves_the_model_as_it_was(arch):
    """No gradient left on the parameters, the attention back on its fast path, the answer's logits unchanged;
    catches a map computed with the keep_probs switch left on, or parameters' .grad filled by the backward pass."""
    cfg = replace(CONFIGS["tiny"], arch=arch, num_answers=5)
    model = scrambled(cfg)
    pixels, input_ids, attention_mask = inputs(cfg)
    with torch.no_grad():
        plain = model.vqa_head(model(pixels, input_ids, attention_mask)["cls_feats"])
        logits, shares, _ = relevancy.relevancy_maps(model, pixels, input_ids, attention_mask)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    assert shares.shape == (2, cfg.num_patches) and torch.isfinite(shares).all()
    torch.testing.assert_close(shares.sum(dim=1), torch.ones(2))
    assert all(parameter.grad is None for parameter in model.parameters())
    attentions = [module for module in model.modules() if isinstance(module, Attention)]
    assert all(not attention.keep_probs and attention.probs is None for attention in attentions)

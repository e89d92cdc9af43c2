"""Which image patches an answer depends on: the relevancy map of Chefer, Gur & Wolf (ICCV 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", §3).

Off the reading path: the first of the two maps of `predict.py --explain`, the map of dev_report.html, and
the one the pointing game reports first (report.py draws and scores it). A raw attention map shows where one
layer's tokens look; the answer is made by every layer, through the residual connections and the other stream.
Relevancy follows it through every attention layer (the feed-forward layers and norms count only through the
gradients below). Each attention layer's probabilities A [B, heads, queries, keys] are weighted by the gradient
of the top answer's logit with respect to them (⊙: elementwise), the positive part kept and the heads averaged:

    Abar = mean over heads of max(0, dlogit/dA ⊙ A)                    [B, queries, keys], one per attention layer

A relevance matrix R_xy [B, tokens of x, tokens of y] says how much each token of stream y (t: text, i: image)
has gone into each token of stream x so far. They start as the identity (R_tt, R_ii: each token is its own
source) and zero (R_ti, R_it), and each attention layer adds to them, the "+=" standing for the layer's
residual connection (products are matrix products; s is the stream whose tokens ask, q the other one):

    self-attention of stream s:        R_ss += Abar R_ss     R_sq += Abar R_sq
    s attends to the other stream q:   R_sq += norm(R_ss)^T Abar norm(R_qq)     R_ss += Abar R_qs

where norm(R) takes the identity out, scales each row to sum 1 and puts the identity back (the paper's eq. 8-9:
without it the self-relevance of the residual path drowns the cross-modal one). The unimodal encoders' layers
come first (the paper does the same for LXMERT's), then the co-attention layers. At the end R_ti says how much
each image token went into each text token. METER's answer reads two tokens, the text [CLS] and the image class
token (model.Meter.fuse's poolers, concatenated), so the map is R_ti's text [CLS] row plus R_ii's image
class-token row, over the patches, as shares that sum to 1. ViLT is one stream: R over all its tokens, the
pooled token's row over the patches.

    python -m pytest -q tests/test_relevancy.py   # a few seconds on CPU

Choices where the paper is silent:
- Both pooled tokens' rows are added as they are, neither rescaled: the head reads both, and each row is that
  token's relevance to the same patches (the paper's LXMERT pools only the text [CLS]).
- One backward pass for the whole batch explains each question's top answer: the samples do not mix, so the
  sum of their top logits has each sample's gradient.
- The co-attention layers of Ko-METER run the two streams in parallel (each reads the other's output of the
  previous layer, model.Meter.fuse); the cross-attention rules therefore read the other stream's relevance of
  the previous layer, and the own stream's after this layer's self-attention.
"""

from contextlib import contextmanager

import torch

from model import Attention


@contextmanager
def keeping_probabilities(modules):
    """Every model.Attention in `modules` takes the written-out path and keeps its probabilities in .probs (with
    their autograd graph) while the block runs; afterwards they are back on the fast path."""
    for attention in modules:
        attention.keep_probs = True
    try:
        yield
    finally:
        for attention in modules:
            attention.keep_probs, attention.probs = False, None


def gradient_weighted(probs, grad):
    """Abar of one attention layer: probabilities and their gradient [B, heads, queries, keys] -> [B, queries, keys]
    (the paper's eq. 5)."""
    return (grad * probs).clamp(min=0).mean(dim=1).float()


def normalised(relevance):
    """norm(R) of the paper's eq. 8-9: R - I with each row scaled to sum 1, plus I. [B, N, N] -> [B, N, N]. A row
    with nothing but itself (all zeros after taking I out) stays the identity row."""
    identity = torch.eye(relevance.shape[-1], device=relevance.device)
    others = relevance - identity
    return others / others.sum(dim=-1, keepdim=True).clamp(min=1e-12) + identity


def self_attention_rule(weighted, r_ss, r_sq):
    """Stream s attends to itself: (R_ss, R_sq) after it (the paper's eq. 6-7)."""
    return r_ss + weighted @ r_ss, r_sq + weighted @ r_sq


def cross_attention_rule(weighted, r_ss, r_sq, r_qs, r_qq):
    """Stream s attends to stream q (weighted [B, tokens of s, tokens of q]): (R_ss, R_sq) after it (the paper's
    eq. 10-11)."""
    r_sq = r_sq + normalised(r_ss).transpose(1, 2) @ weighted @ normalised(r_qq)
    return r_ss + weighted @ r_qs, r_sq


def meter_relevance(model, weighted):
    """(R_ti [B, T, 1+N], R_ii [B, 1+N, 1+N]) of a Ko-METER; weighted: {model.Attention: its Abar}."""
    cross = weighted[model.text_layers[0].cross_attention]  # [B, T, 1+N]: the sizes of every R
    (batch, text_tokens, image_tokens), device = cross.shape, cross.device
    r_tt = torch.eye(text_tokens, device=device).repeat(batch, 1, 1)
    r_ii = torch.eye(image_tokens, device=device).repeat(batch, 1, 1)
    r_ti = torch.zeros(batch, text_tokens, image_tokens, device=device)
    r_it = torch.zeros(batch, image_tokens, text_tokens, device=device)
    for layer in model.text.layers:  # the text encoder (RoBERTa)
        r_tt, r_ti = self_attention_rule(weighted[layer.self_attention], r_tt, r_ti)
    for block in model.vision.blocks:  # the image encoder (CLIP)
        r_ii, r_it = self_attention_rule(weighted[block.attention], r_ii, r_it)
    for text_layer, image_layer in zip(model.text_layers, model.image_layers):  # the co-attention layer pairs
        previous_tt, previous_ti, previous_it, previous_ii = r_tt, r_ti, r_it, r_ii  # what the cross-attentions read
        r_tt, r_ti = self_attention_rule(weighted[text_layer.self_attention], r_tt, r_ti)
        r_ii, r_it = self_attention_rule(weighted[image_layer.self_attention], r_ii, r_it)
        r_tt, r_ti = cross_attention_rule(weighted[text_layer.cross_attention], r_tt, r_ti, previous_it, previous_ii)
        r_ii, r_it = cross_attention_rule(weighted[image_layer.cross_attention], r_ii, r_it, previous_ti, previous_tt)
    return r_ti, r_ii


def relevancy_maps(model, pixels, input_ids, attention_mask):
    """(VQA logits [B, num_answers], relevancy [B, N]: how much each patch went into the top answer, as shares that
    sum to 1 over the patches, {model.Attention: its probabilities [B, heads, T, S]}: every attention's, kept on
    the way, so that a caller needs no second pass for a raw attention map). The model must have a VQA head;
    runs with gradients even under torch.no_grad, and leaves no gradient on the parameters."""
    attentions = [module for module in model.modules() if isinstance(module, Attention)]
    text_tokens = input_ids.shape[1]
    with torch.enable_grad(), keeping_probabilities(attentions):
        logits = model.vqa_head(model(pixels, input_ids, attention_mask)["cls_feats"])  # [B, num_answers]
        top_logits = logits.gather(1, logits.argmax(dim=1, keepdim=True))  # [B, 1]
        probs = [attention.probs for attention in attentions]
        grads = torch.autograd.grad(top_logits.sum(), probs)  # every attention layer has a path to the answer
    weighted = {attention: gradient_weighted(p.detach(), g) for attention, p, g in zip(attentions, probs, grads)}
    if model.cfg.arch == "meter":
        r_ti, r_ii = meter_relevance(model, weighted)
        relevance = r_ti[:, 0, 1:] + r_ii[:, 0, 1:]  # the two pooled tokens' rows over the patches: [B, N]
    else:
        first = weighted[model.blocks[0].attention]  # [B, T+1+N, T+1+N]
        r = torch.eye(first.shape[-1], device=first.device).repeat(first.shape[0], 1, 1)
        for block in model.blocks:
            r = r + weighted[block.attention] @ r  # the self-attention rule; one stream, so R is all of it
        relevance = r[:, 0, text_tokens + 1:]  # the pooled token's row over the patches: [B, N]
    shares = relevance / relevance.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return logits.detach(), shares, {attention: p.detach() for attention, p in zip(attentions, probs)}

"""The model: Ko-METER, a Korean dual-stream vision-language transformer, written from plain tensor ops.

    image -> CLIP ViT-B/16 (11 of 12 blocks) -> Linear -> + modality row 1 --+
                                                                           +-> 6 co-attention layer pairs
    text  -> KLUE RoBERTa-base               -> Linear -> + modality row 0 --+      -> 2 poolers -> cls_feats [B, 1536]

The modality embedding is one learned vector per stream, added to every token of that stream (row 0 text,
row 1 image), so that the fusion layers can tell which stream a token came from.

First stop of the reading path (model.py -> data.py -> pretrain.py -> finetune.py). Follows METER (Dou et al.,
CVPR 2022, §3.2: co-attention fusion; §4: the pretraining heads and optimisation) as Ko-METER (KCC 2022)
adapts it to Korean. Read it top to bottom: configs, attention, the CLIP image encoder, the KLUE RoBERTa text
encoder, the co-attention layer, the whole model with its poolers and heads, the ViLT single-stream baseline
(Kim et al., ICML 2021) of the paper's comparison, and the optimiser with METER's learning-rate groups.
Loading the real checkpoints into these modules is load_weights.py's job.

    python model.py        # parameters per part of the base model, then a tiny forward pass on CPU

Choices where the papers are silent:
- The ViLT baseline's blocks are CLIP's (QuickGELU, LayerNorm eps 1e-5), so that both models can start from
  the same checkpoint and the comparison isolates the architecture.
- Attention runs through F.scaled_dot_product_attention unless probabilities are asked for; the written-out
  path computes the same numbers (tests check both ways agree).
- Weight decay skips biases and norms (as METER's code does) and the class, position, modality and token-type
  embeddings; the modality embedding learns at the fusion's multiple (METER's code: at the base lr).
"""

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# Configuration: the defaults are Ko-METER base, i.e. the shapes of the public checkpoints.

@dataclass
class MeterConfig:
    arch: str = "meter"            # "meter": two streams + co-attention; "vilt": one stream (ViLT, Kim et al. 2021)
    # vision encoder: CLIP ViT-B/16
    image_size: int = 224          # input side in pixels; load_weights.py resizes position rows to fit it
    patch_size: int = 16           # each patch_size x patch_size square of pixels becomes one token
    vision_width: int = 768        # CLIP ViT-B token width
    vision_layers: int = 11        # METER keeps only the first 11 of CLIP's 12 blocks (its CLIP wrapper builds layers - 1)
    vision_heads: int = 12         # 768 / 64
    # text encoder: KLUE RoBERTa-base
    vocab_size: int = 32000        # KLUE WordPiece vocabulary (training sets it to the tokenizer's size)
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_ffn_width: int = 3072
    max_positions: int = 514       # 512 tokens + the 2 rows RoBERTa skips (its positions start at pad_id + 1)
    pad_id: int = 1                # KLUE's [PAD]; RoBERTa also uses it as the position offset
    # fusion: co-attention layers, poolers and heads (new weights)
    hidden_size: int = 768         # width of the fusion streams
    fusion_layers: int = 6         # layer pairs (one text layer + one image layer each)
    fusion_heads: int = 12
    fusion_ffn_width: int = 3072
    dropout: float = 0.1           # text encoder and fusion; CLIP has none
    num_answers: int = 0           # VQA answer classes; 0 = no VQA head (pretraining)
    vilt_layers: int = 12          # arch="vilt" only: pre-LN blocks of the single stream (all 12 of CLIP)
    fast_attention: bool = True    # F.scaled_dot_product_attention instead of the written-out softmax

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS = {
    "base": MeterConfig(),
    # The CPU configuration of the demos and tests: width 128, 2 layers per stream, 64 px images in 16 px patches
    # (a 4 x 4 grid, each quarter of a demo picture 2 x 2 patches: the demo's stages run 1.5 to 2.4 times faster
    # than with 8 px, and read shapes better). The encoders have 2 heads of 64 (CLIP's and RoBERTa's head width),
    # the fusion 4 of 32: with 2 of 64 the demo's fine-tuned Ko-METER scored 5.5 points lower on the shapes (three
    # seeds) and level on the bars (one seed; EXPERIMENTS.md). No dropout: the demo runs underfit, not overfit.
    "tiny": MeterConfig(image_size=64, patch_size=16, vision_width=128, vision_layers=2, vision_heads=2,
                        vocab_size=512, text_width=128, text_layers=2, text_heads=2, text_ffn_width=512,
                        max_positions=66, hidden_size=128, fusion_layers=2, fusion_heads=4,
                        fusion_ffn_width=512, vilt_layers=4, dropout=0.0),
}


# -----------------------------------------------------------------------------
# Attention, written out once. Self-attention when `context` is None, cross-attention otherwise.
# With keep_probs set, the written-out path runs and the probabilities stay in .probs, with their autograd graph:
# the maps of predict.py --explain (report.py, relevancy.py) come out of the very modules the model runs.

class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int, dropout: float = 0.0, fast: bool = True):
        super().__init__()
        assert width % num_heads == 0, f"width {width} is not divisible by {num_heads} heads"
        self.num_heads = num_heads
        self.head_width = width // num_heads
        self.dropout = dropout  # on the attention probabilities (BERT / RoBERTa); 0 in CLIP
        self.fast = fast
        self.keep_probs = False  # set by relevancy.keeping_probabilities: written-out path, probabilities kept
        self.probs = None        # [B, heads, T, S] of the last forward pass while keep_probs is set
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x, context=None, key_mask=None):
        """x [B, T, W] attends to context [B, S, W] (x itself when None); key_mask [B, S] bool, True = real."""
        context = x if context is None else context
        batch, queries, width = x.shape
        keys = context.shape[1]
        # [B, T, W] -> [B, T, heads, D] -> [B, heads, T, D] (D = head_width, 64 in the base model); keys and values
        # likewise with S tokens
        q = self.query(x).view(batch, queries, self.num_heads, self.head_width).transpose(1, 2)
        k = self.key(context).view(batch, keys, self.num_heads, self.head_width).transpose(1, 2)
        v = self.value(context).view(batch, keys, self.num_heads, self.head_width).transpose(1, 2)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, S] -> [B, 1, 1, S]
        dropout = self.dropout if self.training else 0.0
        if self.fast and not self.keep_probs:  # SDPA returns no probabilities
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_width)  # [B, heads, T, S]
            if mask is not None:  # padded keys get the most negative number of the compute dtype
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            if self.keep_probs:
                self.probs = probs
            probs = F.dropout(probs, dropout, self.training)
            y = probs @ v  # [B, heads, T, S] @ [B, heads, S, D] -> [B, heads, T, D]
        y = y.transpose(1, 2).reshape(batch, queries, width)  # [B, heads, T, D] -> [B, T, W]
        return self.out(y)


# -----------------------------------------------------------------------------
# Vision encoder: CLIP ViT-B/16 (Radford et al., 2021), pre-LN blocks, QuickGELU, no dropout.

class PatchEmbedding(nn.Module):
    """Pixels -> [class token, one token per patch] + position rows, then CLIP's ln_pre."""

    def __init__(self, cfg: MeterConfig):
        super().__init__()
        width = cfg.vision_width
        self.patch = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)  # CLIP: no bias
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.position_embedding = nn.Parameter(torch.zeros(1 + cfg.num_patches, width))
        self.norm = nn.LayerNorm(width, eps=1e-5)

    def forward(self, pixels):
        x = self.patch(pixels)            # [B, 3, S, S] -> [B, W, S/P, S/P]
        x = x.flatten(2).transpose(1, 2)  # [B, W, S/P, S/P] -> [B, N, W]
        class_token = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [W] -> [B, 1, W]
        x = torch.cat([class_token, x], dim=1) + self.position_embedding.to(x.dtype)  # [B, 1+N, W]
        return self.norm(x)


class PreNormBlock(nn.Module):
    """x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)). CLIP's residual block, also ViLT's."""

    def __init__(self, width: int, num_heads: int, fast: bool = True):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width, eps=1e-5)
        self.attention = Attention(width, num_heads, dropout=0.0, fast=fast)
        self.mlp_norm = nn.LayerNorm(width, eps=1e-5)
        self.mlp_in = nn.Linear(width, 4 * width)
        self.mlp_out = nn.Linear(4 * width, width)

    def forward(self, x, key_mask=None):
        x = x + self.attention(self.attention_norm(x), key_mask=key_mask)
        hidden = self.mlp_in(self.mlp_norm(x))
        hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU: what CLIP was trained with, not erf GELU
        return x + self.mlp_out(hidden)


class ClipVision(nn.Module):
    def __init__(self, cfg: MeterConfig):
        super().__init__()
        self.embeddings = PatchEmbedding(cfg)
        self.blocks = nn.ModuleList(PreNormBlock(cfg.vision_width, cfg.vision_heads, cfg.fast_attention)
                                    for _ in range(cfg.vision_layers))
        self.post_norm = nn.LayerNorm(cfg.vision_width, eps=1e-5)

    def forward(self, pixels):
        """pixels [B, 3, S, S] (CLIP-normalised) -> [B, 1+N, W], every token after ln_post (as METER does)."""
        x = self.embeddings(pixels)
        for block in self.blocks:
            x = block(x)
        return self.post_norm(x)


# -----------------------------------------------------------------------------
# Text encoder: KLUE RoBERTa-base (post-LN BERT layers, erf GELU, dropout 0.1).

class TextEmbeddings(nn.Module):
    def __init__(self, cfg: MeterConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.word = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.position = nn.Embedding(cfg.max_positions, cfg.text_width)
        self.token_type = nn.Embedding(1, cfg.text_width)  # RoBERTa has a single token type: row 0 everywhere
        self.norm = nn.LayerNorm(cfg.text_width, eps=1e-5)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, attention_mask=None):
        """input_ids [B, T] -> [B, T, W]. The mask is not needed (positions come from the pad ids); it is
        accepted so that ViLT's text part is called like the RoBERTa encoder: model.text(ids, mask), as
        pretrain.pretrain_losses does for both architectures."""
        # RoBERTa positions: real tokens count up from pad_id + 1 = 2, pads sit at pad_id = 1
        is_token = (input_ids != self.pad_id).long()
        positions = torch.cumsum(is_token, dim=1) * is_token + self.pad_id  # [B, T]
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        return self.dropout(self.norm(x))


class PostNormLayer(nn.Module):
    """A BERT layer, LN(x + sublayer(x)); with `cross_attention=True` it is METER's co-attention layer:
    self-attention, then attention to the other stream, then the feed-forward network (METER §3.2, Fig. 3)."""

    def __init__(self, width, num_heads, ffn_width, eps, dropout, cross_attention=False, fast=True):
        super().__init__()
        self.self_attention = Attention(width, num_heads, dropout, fast)
        self.self_attention_norm = nn.LayerNorm(width, eps=eps)
        if cross_attention:
            self.cross_attention = Attention(width, num_heads, dropout, fast)
            self.cross_attention_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, ffn_width)
        self.ffn_out = nn.Linear(ffn_width, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, context=None, context_mask=None):
        x = self.self_attention_norm(x + self.dropout(self.self_attention(x, key_mask=mask)))
        if context is not None:
            attended = self.cross_attention(x, context, key_mask=context_mask)
            x = self.cross_attention_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class RobertaText(nn.Module):
    def __init__(self, cfg: MeterConfig):
        super().__init__()
        self.embeddings = TextEmbeddings(cfg)
        # RoBERTa's LayerNorm eps is 1e-5 (BERT's is 1e-12)
        self.layers = nn.ModuleList(
            PostNormLayer(cfg.text_width, cfg.text_heads, cfg.text_ffn_width, 1e-5, cfg.dropout,
                          fast=cfg.fast_attention) for _ in range(cfg.text_layers))

    def forward(self, input_ids, attention_mask):
        """input_ids [B, T], attention_mask [B, T] (1 = token, 0 = pad) -> last hidden state [B, T, W]."""
        text_mask = attention_mask.bool()
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, text_mask)
        return x


# -----------------------------------------------------------------------------
# Heads and weight initialisation, shared by both architectures.

class Pooler(nn.Module):
    """tanh(Linear(token 0)): the stream's summary vector."""

    def __init__(self, width: int):
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, feats):
        return torch.tanh(self.dense(feats[:, 0]))  # [B, T, W] -> [B, W]


class MlmHead(nn.Module):
    """Linear -> GELU -> LN -> vocabulary projection. Not tied to the word embeddings (as in METER)."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=1e-12)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, feats):
        return self.decoder(self.norm(F.gelu(self.dense(feats)))) + self.bias


class VqaHead(nn.Module):
    """Linear -> LN -> GELU -> Linear on cls_feats (METER's vqa_classifier.{0, 1, 3})."""

    def __init__(self, in_width: int, hidden_width: int, num_answers: int):
        super().__init__()
        self.dense = nn.Linear(in_width, hidden_width)
        self.norm = nn.LayerNorm(hidden_width)  # torch's default eps 1e-5, as METER's
        self.classifier = nn.Linear(hidden_width, num_answers)

    def forward(self, cls_feats):
        return self.classifier(F.gelu(self.norm(self.dense(cls_feats))))


def init_weights(module: nn.Module):
    """METER's (and BERT's) initialisation: N(0, 0.02) weights, zero biases, LayerNorm (1, 0)."""
    for child in module.modules():
        if isinstance(child, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(child.weight, std=0.02)
            if getattr(child, "bias", None) is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, nn.LayerNorm):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
        elif isinstance(child, PatchEmbedding):
            nn.init.normal_(child.class_embedding, std=0.02)
            nn.init.normal_(child.position_embedding, std=0.02)
        elif isinstance(child, MlmHead):
            nn.init.zeros_(child.bias)


# -----------------------------------------------------------------------------
# Ko-METER: two encoders, co-attention fusion, poolers and heads (METER §3.2 and §4).

class Meter(nn.Module):
    def __init__(self, cfg: MeterConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_size
        self.vision = ClipVision(cfg)
        self.text = RobertaText(cfg)
        self.text_proj = nn.Linear(cfg.text_width, hidden)
        self.image_proj = nn.Linear(cfg.vision_width, hidden)
        self.modality = nn.Embedding(2, hidden)  # row 0 is added to text tokens, row 1 to image tokens

        def co_attention_layer():  # BERT's LayerNorm eps 1e-12, not RoBERTa's
            return PostNormLayer(hidden, cfg.fusion_heads, cfg.fusion_ffn_width, 1e-12, cfg.dropout,
                                 cross_attention=True, fast=cfg.fast_attention)

        self.text_layers = nn.ModuleList(co_attention_layer() for _ in range(cfg.fusion_layers))
        self.image_layers = nn.ModuleList(co_attention_layer() for _ in range(cfg.fusion_layers))
        self.text_pooler = Pooler(hidden)
        self.image_pooler = Pooler(hidden)
        self.mlm_head = MlmHead(hidden, cfg.vocab_size)
        self.itm_head = nn.Linear(2 * hidden, 2)
        self.vqa_head = VqaHead(2 * hidden, 2 * hidden, cfg.num_answers) if cfg.num_answers > 0 else None
        init_weights(self)

    def fuse(self, text_hidden, attention_mask, image_hidden):
        """Encoder outputs [B, T, Wt] and [B, 1+N, Wv] -> fused features of both streams and cls_feats."""
        text_mask = attention_mask.bool()
        text_feats = self.text_proj(text_hidden) + self.modality.weight[0]      # [B, T, H]
        image_feats = self.image_proj(image_hidden) + self.modality.weight[1]   # [B, 1+N, H]
        for text_layer, image_layer in zip(self.text_layers, self.image_layers):
            # both streams read the other's output of the previous layer: they update in parallel
            text_feats, image_feats = (
                text_layer(text_feats, mask=text_mask, context=image_feats, context_mask=None),  # image tokens: never padded
                image_layer(image_feats, mask=None, context=text_feats, context_mask=text_mask))
        cls_feats = torch.cat([self.text_pooler(text_feats), self.image_pooler(image_feats)], dim=-1)  # [B, 2H]
        return {"text_feats": text_feats, "image_feats": image_feats, "cls_feats": cls_feats}

    def forward(self, pixels, input_ids, attention_mask):
        return self.fuse(self.text(input_ids, attention_mask), attention_mask, self.vision(pixels))


# -----------------------------------------------------------------------------
# ViLT baseline (Kim et al., ICML 2021, §3): text and image tokens in one sequence through one stack of pre-LN blocks.
# The blocks are CLIP's (QuickGELU, eps 1e-5) so that they can start from the same checkpoint, and the
# text embeddings are KLUE's: the comparison with Ko-METER then isolates the architecture.

class Vilt(nn.Module):
    def __init__(self, cfg: MeterConfig):
        super().__init__()
        assert cfg.text_width == cfg.vision_width, "ViLT needs one width for text and image tokens"
        self.cfg = cfg
        width = cfg.vision_width
        self.vision = PatchEmbedding(cfg)
        self.text = TextEmbeddings(cfg)
        self.modality = nn.Embedding(2, width)  # ViLT's token type: 0 text, 1 image
        self.blocks = nn.ModuleList(PreNormBlock(width, cfg.vision_heads, cfg.fast_attention)
                                    for _ in range(cfg.vilt_layers))
        self.norm = nn.LayerNorm(width, eps=1e-5)
        self.pooler = Pooler(width)
        self.mlm_head = MlmHead(width, cfg.vocab_size)
        self.itm_head = nn.Linear(width, 2)
        self.vqa_head = VqaHead(width, 2 * width, cfg.num_answers) if cfg.num_answers > 0 else None
        init_weights(self)

    def fuse(self, text_hidden, attention_mask, image_hidden):
        """Text embeddings [B, T, W] and patch embeddings [B, 1+N, W] -> one stream of T+1+N tokens. Named and
        ordered as Meter.fuse's arguments, so that pretrain.pretrain_losses runs either model."""
        text_tokens = text_hidden.shape[1]
        x = torch.cat([text_hidden + self.modality.weight[0], image_hidden + self.modality.weight[1]], dim=1)
        image_mask = attention_mask.new_ones(image_hidden.shape[:2])
        key_mask = torch.cat([attention_mask, image_mask], dim=1).bool()  # [B, T+1+N]
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(x)
        return {"text_feats": x[:, :text_tokens], "image_feats": x[:, text_tokens:], "cls_feats": self.pooler(x)}

    def forward(self, pixels, input_ids, attention_mask):
        return self.fuse(self.text(input_ids), attention_mask, self.vision(pixels))


def build_model(cfg: MeterConfig) -> nn.Module:
    if cfg.arch == "meter":
        return Meter(cfg)
    if cfg.arch == "vilt":
        return Vilt(cfg)
    raise ValueError(f"unknown architecture {cfg.arch!r}: expected 'meter' or 'vilt'")


# -----------------------------------------------------------------------------
# Optimiser: AdamW with METER's parameter groups, beside the model as nanoGPT's configure_optimizers.

def part_of(param_name: str) -> str:
    """vision | text: the encoders, pretrained, at the base lr | fusion: new, 5x | heads: 5x or 50x.
    In ViLT the encoders are the embeddings; its blocks do the fusing, so they train at the fusion's lr
    (ViLT trains its whole transformer at a high lr), even when they start from CLIP."""
    top = param_name.split(".")[0]
    if top in ("vision", "text"):
        return top
    return "heads" if top in ("mlm_head", "itm_head", "vqa_head") else "fusion"


def no_weight_decay(param_name: str) -> bool:
    """AdamW skips biases, LayerNorm weights, the class / position / modality / token-type embeddings and CLIP's
    learned temperature (pretrain_encoders.py)."""
    return param_name.endswith("bias") or any(word in param_name for word in ("norm", "class_embedding", "position",
                                                                              "modality", "token_type", "log_scale"))


def count_parameters(model: nn.Module) -> dict[str, int]:
    counts = {"vision": 0, "text": 0, "fusion": 0, "heads": 0}
    for name, param in model.named_parameters():
        counts[part_of(name)] += param.numel()
    counts["total"] = sum(counts.values())
    return counts


ADAMW_BETAS = (0.9, 0.98)  # METER's betas; beta2 0.98 rather than 0.999 steadies early transformer training
ADAMW_EPS = 1e-8
WEIGHT_DECAY = 0.01


def build_optimizer(model: nn.Module, base_lr: float, lr_multipliers: dict[str, float],
                    weight_decay: float = WEIGHT_DECAY) -> torch.optim.AdamW:
    """AdamW with one parameter group per (part, decays or not): the encoders learn at the base lr and the
    new fusion and heads at multiples of it (METER §4: 5x fusion, 5x heads in pretraining, 50x for VQA).

    Each group keeps its parameter names (the optimizer state is saved by name) and its lr_multiplier:
    the training loops set group["lr"] = training.lr_at(step, ...) * group["lr_multiplier"] by hand every step."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part, decays = part_of(name), not no_weight_decay(name)
        if (part, decays) not in groups:
            groups[(part, decays)] = {"params": [], "names": [], "part": part,
                                      "weight_decay": weight_decay if decays else 0.0,
                                      "lr_multiplier": lr_multipliers[part], "lr": base_lr * lr_multipliers[part]}
        groups[(part, decays)]["params"].append(parameter)
        groups[(part, decays)]["names"].append(name)
    # fused: one kernel updates every parameter; the update of a few hundred million parameters is
    # memory-bound, and the default per-tensor loop reads and writes them several times (6x slower on CPU)
    return torch.optim.AdamW(list(groups.values()), lr=base_lr, betas=ADAMW_BETAS, eps=ADAMW_EPS, fused=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    for arch in ("meter", "vilt"):
        counts = count_parameters(build_model(replace(CONFIGS["base"], arch=arch, num_answers=3811)))
        print(f"{arch} base (3,811 answers): " + ", ".join(f"{part} {n / 1e6:.1f}M" for part, n in counts.items()))
    cfg = replace(CONFIGS["tiny"], num_answers=10)
    model = build_model(cfg).eval()
    pixels = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    input_ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])  # KLUE's ids: [CLS] = 0, [PAD] = 1, [SEP] = 2
    out = model(pixels, input_ids, (input_ids != cfg.pad_id).long())
    print("tiny forward:", {name: tuple(value.shape) for name, value in out.items()},
          "vqa logits", tuple(model.vqa_head(out["cls_feats"]).shape))

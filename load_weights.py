"""
Loading real checkpoints into model.py: CLIP ViT-B/16, KLUE RoBERTa-base, official METER and Ko-METER.

Every file is read with safetensors and mapped onto the model through one explicit table per layout
(our name, the file's name, an optional transform). Shapes are asserted, hyper-parameters are read from
the file's own shapes (heads = width / 64, where a file doesn't say), and every key that was missing,
ignored, resized or freshly initialised is reported. A load either fills every tensor it promises or
changes nothing. Follows METER's use of CLIP and RoBERTa (Dou et al., CVPR 2022, §3); the layouts are
those of the Hugging Face checkpoints (openai/clip-vit-base-patch16, klue/roberta-base), OpenAI's CLIP
release and METER's released checkpoints. Ko-METER's own checkpoints are written by checkpoints.save_model.

    python load_weights.py inspect clip/model.safetensors      # layout, config from shapes, parameters per part
    python load_weights.py convert meter.ckpt meter.safetensors  # .bin / .pt / .ckpt -> safetensors, no pickle code
"""

import argparse
import json
import math
import os
import pickle
import re
import sys
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoints import atomic_path, verify_checksum, write_json
from model import CONFIGS, MeterConfig, TextEmbeddings, build_model, count_parameters


# -----------------------------------------------------------------------------
# Reading a safetensors file, and what a load reports.

def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    verify_checksum(path)  # a checkpoint's file, cut short or changed since it was saved, is refused here
    try:
        with safe_open(path, framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for broken headers and short files
        raise ValueError(f"{path}: not a readable safetensors file ({error}); "
                         f"convert pickled checkpoints with `python load_weights.py convert`") from None
    return state, metadata


@dataclass
class LoadReport:
    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)       # our names, filled from the file
    ignored: list[str] = field(default_factory=list)      # the file's names nobody asked for
    initialised: list[str] = field(default_factory=list)  # our names left at their fresh initialisation
    resized: list[str] = field(default_factory=list)      # position embeddings interpolated to a new size

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.layout} layout)"]
        if self.resized:
            lines.append("  resized: " + ", ".join(self.resized))
        if self.initialised:
            lines.append("  freshly initialised: " + group_names(self.initialised))
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} keys the model does not use: " + group_names(self.ignored))
        return "\n".join(lines)


def group_names(names: list[str]) -> str:
    """Short listing: 'text_model.* (196), vision_model.encoder.layers.11.* (16), logit_scale'."""
    groups: dict[str, int] = {}
    for name in names:
        match = re.match(r"(.*?\.\d+\.)", name)  # cut after the first layer number
        group = match.group(1) + "*" if match else name
        groups[group] = groups.get(group, 0) + 1
    by_top: dict[str, list[str]] = {}
    for prefix in groups:
        by_top.setdefault(prefix.split(".")[0], []).append(prefix)
    merged: dict[str, int] = {}
    for top, prefixes in by_top.items():
        if len(prefixes) > 3:  # many layers of one tower: one line for the tower
            merged[top + ".*"] = sum(groups[prefix] for prefix in prefixes)
        else:
            merged.update({prefix: groups[prefix] for prefix in prefixes})
    return ", ".join(f"{name} ({count})" if count > 1 else name for name, count in merged.items())


# -----------------------------------------------------------------------------
# The key tables. Each entry: (our name, the file's name, transform or None).

def qkv_part(index):
    """OpenAI's fused in_proj weight/bias stacks q, k, v on dim 0: take the index-th third."""
    return lambda tensor: tensor.chunk(3, dim=0)[index]


def clip_table(layout: str, prefix: str, num_blocks: int) -> list:
    """Our ClipVision names <- CLIP's, in Hugging Face ("hf") or OpenAI ("openai") naming."""
    if layout == "hf":
        table = [("embeddings.patch.weight", "embeddings.patch_embedding.weight", None),
                 ("embeddings.class_embedding", "embeddings.class_embedding", None),
                 ("embeddings.position_embedding", "embeddings.position_embedding.weight", None),
                 ("embeddings.norm.weight", "pre_layrnorm.weight", None),  # sic: HF spells it "layrnorm"
                 ("embeddings.norm.bias", "pre_layrnorm.bias", None),
                 ("post_norm.weight", "post_layernorm.weight", None),
                 ("post_norm.bias", "post_layernorm.bias", None)]
        block_pairs = [("attention_norm", "layer_norm1"), ("attention.query", "self_attn.q_proj"),
                       ("attention.key", "self_attn.k_proj"), ("attention.value", "self_attn.v_proj"),
                       ("attention.out", "self_attn.out_proj"), ("mlp_norm", "layer_norm2"),
                       ("mlp_in", "mlp.fc1"), ("mlp_out", "mlp.fc2")]
        for block in range(num_blocks):
            for ours, theirs in block_pairs:
                for kind in ("weight", "bias"):
                    table.append((f"blocks.{block}.{ours}.{kind}", f"encoder.layers.{block}.{theirs}.{kind}", None))
    else:
        table = [("embeddings.patch.weight", "conv1.weight", None),
                 ("embeddings.class_embedding", "class_embedding", None),
                 ("embeddings.position_embedding", "positional_embedding", None),
                 ("embeddings.norm.weight", "ln_pre.weight", None),
                 ("embeddings.norm.bias", "ln_pre.bias", None),
                 ("post_norm.weight", "ln_post.weight", None),
                 ("post_norm.bias", "ln_post.bias", None)]
        block_pairs = [("attention_norm", "ln_1"), ("attention.out", "attn.out_proj"), ("mlp_norm", "ln_2"),
                       ("mlp_in", "mlp.c_fc"), ("mlp_out", "mlp.c_proj")]
        for block in range(num_blocks):
            theirs_block = f"transformer.resblocks.{block}"
            for ours, theirs in block_pairs:
                for kind in ("weight", "bias"):
                    table.append((f"blocks.{block}.{ours}.{kind}", f"{theirs_block}.{theirs}.{kind}", None))
            for index, name in enumerate(("query", "key", "value")):
                table.append((f"blocks.{block}.attention.{name}.weight", f"{theirs_block}.attn.in_proj_weight",
                              qkv_part(index)))
                table.append((f"blocks.{block}.attention.{name}.bias", f"{theirs_block}.attn.in_proj_bias",
                              qkv_part(index)))
    return [(ours, prefix + theirs, transform) for ours, theirs, transform in table]


def bert_layer_table(ours_prefix: str, theirs_prefix: str, cross_attention: bool) -> list:
    """One PostNormLayer <- one Hugging Face BERT / RoBERTa layer (METER's fusion layers use the same names)."""
    pairs = [("self_attention.query", "attention.self.query"), ("self_attention.key", "attention.self.key"),
             ("self_attention.value", "attention.self.value"), ("self_attention.out", "attention.output.dense"),
             ("self_attention_norm", "attention.output.LayerNorm")]
    if cross_attention:
        pairs += [("cross_attention.query", "crossattention.self.query"),
                  ("cross_attention.key", "crossattention.self.key"),
                  ("cross_attention.value", "crossattention.self.value"),
                  ("cross_attention.out", "crossattention.output.dense"),
                  ("cross_attention_norm", "crossattention.output.LayerNorm")]
    pairs += [("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"), ("ffn_norm", "output.LayerNorm")]
    return [(f"{ours_prefix}{ours}.{kind}", f"{theirs_prefix}{theirs}.{kind}", None)
            for ours, theirs in pairs for kind in ("weight", "bias")]


def roberta_table(prefix: str, num_layers: int) -> list:
    """Our RobertaText names <- Hugging Face RobertaModel's."""
    table = [("embeddings.word.weight", "embeddings.word_embeddings.weight", None),
             ("embeddings.position.weight", "embeddings.position_embeddings.weight", None),
             ("embeddings.token_type.weight", "embeddings.token_type_embeddings.weight", None),
             ("embeddings.norm.weight", "embeddings.LayerNorm.weight", None),
             ("embeddings.norm.bias", "embeddings.LayerNorm.bias", None)]
    for layer in range(num_layers):
        table += bert_layer_table(f"layers.{layer}.", f"encoder.layer.{layer}.", cross_attention=False)
    return [(ours, prefix + theirs, transform) for ours, theirs, transform in table]


def with_prefix(prefix: str, table: list) -> list:
    return [(prefix + ours, theirs, transform) for ours, theirs, transform in table]


# The heads of an official METER checkpoint depend on what it was trained for (pretraining: MLM and ITM;
# VQA: the classifier), so they are optional: absent ones keep their fresh initialisation.
METER_HEADS_TABLE = [
    ("mlm_head.dense.weight", "mlm_score.transform.dense.weight", None),
    ("mlm_head.dense.bias", "mlm_score.transform.dense.bias", None),
    ("mlm_head.norm.weight", "mlm_score.transform.LayerNorm.weight", None),
    ("mlm_head.norm.bias", "mlm_score.transform.LayerNorm.bias", None),
    ("mlm_head.decoder.weight", "mlm_score.decoder.weight", None),
    ("mlm_head.bias", "mlm_score.bias", None),
    ("itm_head.weight", "itm_score.fc.weight", None),
    ("itm_head.bias", "itm_score.fc.bias", None),
    ("vqa_head.dense.weight", "vqa_classifier.0.weight", None),
    ("vqa_head.dense.bias", "vqa_classifier.0.bias", None),
    ("vqa_head.norm.weight", "vqa_classifier.1.weight", None),
    ("vqa_head.norm.bias", "vqa_classifier.1.bias", None),
    ("vqa_head.classifier.weight", "vqa_classifier.3.weight", None),
    ("vqa_head.classifier.bias", "vqa_classifier.3.bias", None),
]


def meter_table(cfg: MeterConfig) -> list:
    """Our Meter names <- the official METER checkpoint's (METERTransformerSS.state_dict())."""
    table = with_prefix("vision.", clip_table("openai", "vit_model.visual.", cfg.vision_layers))
    table += with_prefix("text.", roberta_table("text_transformer.", cfg.text_layers))
    table += [(f"{ours}.{kind}", f"{theirs}.{kind}", None)
              for ours, theirs in (("text_proj", "cross_modal_text_transform"),
                                   ("image_proj", "cross_modal_image_transform"),
                                   ("text_pooler.dense", "cross_modal_text_pooler.dense"),
                                   ("image_pooler.dense", "cross_modal_image_pooler.dense"))
              for kind in ("weight", "bias")]
    table.append(("modality.weight", "token_type_embeddings.weight", None))
    for layer in range(cfg.fusion_layers):
        for stream in ("text", "image"):
            table += bert_layer_table(f"{stream}_layers.{layer}.", f"cross_modal_{stream}_layers.{layer}.", True)
    return table + METER_HEADS_TABLE


# -----------------------------------------------------------------------------
# Finding a file's layout and the configuration its shapes imply.

def find_prefix(state: dict, suffix: str) -> str | None:
    """The prefix in front of `suffix` in the file ('' / 'vision_model.' / 'roberta.' ...), None if absent."""
    candidates = sorted(key[: -len(suffix)] for key in state if key == suffix or key.endswith("." + suffix))
    return candidates[0] if candidates else None


def detect_layout(state: dict, metadata: dict) -> tuple[str, str]:
    """-> (layout, prefix): ko-meter, meter, clip-hf, clip-openai, roberta; ValueError when none fits."""
    if metadata.get("format") == "ko-meter":
        return "ko-meter", ""
    if "cross_modal_text_transform.weight" in state:
        return "meter", ""
    for layout, suffix in (("clip-hf", "embeddings.patch_embedding.weight"), ("clip-openai", "conv1.weight"),
                           ("roberta", "embeddings.word_embeddings.weight")):
        prefix = find_prefix(state, suffix)
        if prefix is not None:
            return layout, prefix
    sample = ", ".join(sorted(state)[:5])
    raise ValueError(f"unknown checkpoint layout: {len(state)} tensors, none of CLIP, RoBERTa, METER or "
                     f"Ko-METER (first keys: {sample})")


def count_indices(state: dict, prefix: str) -> int:
    """How many numbered sub-modules `prefix.N.` the file holds."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    numbers = {int(match.group(1)) for key in state if (match := pattern.match(key))}
    return max(numbers) + 1 if numbers else 0


def shapes_of(state: dict, *keys: str) -> list:
    """The shapes of the tensors at `keys`; a ValueError names every one the file lacks."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"missing {len(missing)} key{'s' if len(missing) > 1 else ''} its layout needs: "
                         + ", ".join(missing))
    return [state[key].shape for key in keys]


CLIP_BLOCKS = {"clip-hf": "encoder.layers.", "clip-openai": "transformer.resblocks."}  # where blocks are numbered


def clip_config(state: dict, layout: str, prefix: str) -> dict:
    if layout == "clip-hf":
        patch_key, position_key = "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight"
    else:
        patch_key, position_key = "conv1.weight", "positional_embedding"
    blocks = CLIP_BLOCKS[layout]
    patch, position = shapes_of(state, prefix + patch_key, prefix + position_key)
    width, patch_size = patch[0], patch[-1]
    return {"vision_width": width, "vision_heads": width // 64, "patch_size": patch_size,
            "image_size": math.isqrt(position[0] - 1) * patch_size,
            "vision_layers": count_indices(state, prefix + blocks)}


def roberta_config(state: dict, prefix: str) -> dict:
    words, positions, ffn = shapes_of(state, prefix + "embeddings.word_embeddings.weight",
                                      prefix + "embeddings.position_embeddings.weight",
                                      prefix + "encoder.layer.0.intermediate.dense.weight")
    return {"vocab_size": words[0], "text_width": words[1], "text_heads": words[1] // 64,
            "max_positions": positions[0], "text_layers": count_indices(state, prefix + "encoder.layer."),
            "text_ffn_width": ffn[0]}


def meter_config(state: dict) -> MeterConfig:
    """Ko-METER configuration from an official METER checkpoint's shapes."""
    transform, ffn = shapes_of(state, "cross_modal_text_transform.weight",
                               "cross_modal_text_layers.0.intermediate.dense.weight")
    hidden = transform[0]
    vqa = state.get("vqa_classifier.3.weight")
    return MeterConfig(**clip_config(state, "clip-openai", "vit_model.visual."),
                       **roberta_config(state, "text_transformer."),
                       hidden_size=hidden, fusion_heads=hidden // 64,
                       fusion_layers=count_indices(state, "cross_modal_text_layers."),
                       fusion_ffn_width=ffn[0],
                       num_answers=0 if vqa is None else vqa.shape[0])


def config_from_metadata(metadata: dict, path) -> MeterConfig:
    values = json.loads(metadata["config"])
    known = {item.name for item in fields(MeterConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: config in the metadata has fields this version does not know: {unknown}")
    return MeterConfig(**values)


# -----------------------------------------------------------------------------
# Applying a table: build the complete new state first, then load it in one step.

def resize_position_embedding(position_embedding, num_patches: int):
    """[1+N, W] -> [1+M, W]: keep the class row, bicubic-resize the sqrt(N) x sqrt(N) grid of patch rows."""
    old_side, new_side = math.isqrt(position_embedding.shape[0] - 1), math.isqrt(num_patches)
    if old_side == new_side:
        return position_embedding
    class_row, grid = position_embedding[:1], position_embedding[1:]
    width = grid.shape[1]
    grid = grid.reshape(1, old_side, old_side, width).permute(0, 3, 1, 2)  # [N, W] -> [1, W, side, side]
    grid = F.interpolate(grid.float(), size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_side * new_side, width)  # [1, W, side', side'] -> [M, W]
    return torch.cat([class_row, grid.to(position_embedding.dtype)], dim=0)


def apply_table(module: torch.nn.Module, state: dict, table: list, source, layout: str,
                optional: set[str] = frozenset()) -> LoadReport:
    """Fill `module` from `state` through `table`. Required entries must exist with the right shapes;
    `optional` ones (our names) keep their initialisation when absent. Nothing changes on an error."""
    report = LoadReport(str(source), layout)
    targets = module.state_dict()
    new_state, used, missing = {}, set(), []
    for ours, theirs, transform in table:
        if ours not in targets:
            continue  # the model has no such part (a VQA head when num_answers == 0, say)
        if theirs not in state:
            if ours not in optional:
                missing.append(theirs)
            continue
        tensor = state[theirs] if transform is None else transform(state[theirs])
        used.add(theirs)
        expected = targets[ours].shape
        if tensor.shape != expected and ours.endswith("position_embedding") and tensor.shape[1:] == expected[1:]:
            report.resized.append(f"{ours} {tensor.shape[0]} -> {expected[0]} rows")
            tensor = resize_position_embedding(tensor, expected[0] - 1)
        if tensor.shape != expected:
            raise ValueError(f"{source}: {theirs} has shape {tuple(tensor.shape)} but {ours} needs "
                             f"{tuple(expected)}")
        new_state[ours] = tensor.to(targets[ours].dtype)
        report.loaded.append(ours)
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ValueError(f"{source}: missing {len(missing)} required keys for the {layout} layout: {shown}")
    report.initialised = [ours for ours in targets if ours not in new_state]
    new_state.update({ours: targets[ours] for ours in report.initialised})
    report.ignored = sorted(key for key in state if key not in used)
    module.load_state_dict(new_state, strict=True)
    return report


# -----------------------------------------------------------------------------
# The public loaders: load_clip, load_text, load_meter.

def load_clip(vision: torch.nn.Module, path, verbose: bool = True) -> LoadReport:
    """CLIP weights into a ClipVision (its first len(vision.blocks) blocks; the rest of the file is ignored).
    Accepts Hugging Face names (vision_model.…, with or without the prefix) or OpenAI names (visual.…)."""
    state, metadata = read_safetensors(path)
    layout, prefix = detect_layout(state, metadata)
    if not layout.startswith("clip"):
        raise ValueError(f"{path}: expected a CLIP checkpoint, found a {layout} checkpoint")
    table = clip_table(layout.removeprefix("clip-"), prefix, len(vision.blocks))
    report = apply_table(vision, state, table, path, layout)
    if verbose:
        print(report.summary())
    return report


def load_text(text: torch.nn.Module, path, verbose: bool = True) -> LoadReport:
    """KLUE RoBERTa weights (RobertaModel names, or RobertaForMaskedLM's under "roberta.") into a
    RobertaText, or only its embeddings into a TextEmbeddings (the ViLT baseline)."""
    state, metadata = read_safetensors(path)
    layout, prefix = detect_layout(state, metadata)
    if layout != "roberta":
        raise ValueError(f"{path}: expected a RoBERTa checkpoint, found a {layout} checkpoint")
    if isinstance(text, TextEmbeddings):
        table = [(ours.removeprefix("embeddings."), theirs, transform)
                 for ours, theirs, transform in roberta_table(prefix, 0)]
    else:
        table = roberta_table(prefix, len(text.layers))
    report = apply_table(text, state, table, path, layout)
    if verbose:
        print(report.summary())
    return report


def clip_block_count(path) -> int:
    """How many transformer blocks a CLIP file holds, from its key names (no tensor is read)."""
    with safe_open(str(path), "pt") as file:
        names = {name: None for name in file.keys()}
    layout, prefix = detect_layout(names, {})
    return count_indices(names, prefix + CLIP_BLOCKS[layout])


def initialise_encoders(model: torch.nn.Module, clip_path=None, text_path=None, verbose: bool = True):
    """Start a fresh Meter or Vilt from CLIP and KLUE: the paper's "without pretraining" starting point."""
    if clip_path is not None:
        if model.cfg.arch == "meter":
            load_clip(model.vision, clip_path, verbose)
        else:  # ViLT: CLIP's patch embedding, its blocks as the single stream, ln_post as the final norm
            # a view of those parts under ClipVision's names, so that load_clip applies as it is; a stream deeper
            # than the file (the demo's encoders) starts its first blocks from it and keeps the others fresh
            blocks = model.blocks[:min(len(model.blocks), clip_block_count(clip_path))]
            report = load_clip(torch.nn.ModuleDict({"embeddings": model.vision, "blocks": blocks,
                                                    "post_norm": model.norm}), clip_path, verbose=False)
            if verbose:
                print(report.summary() + (f"\n  blocks {len(blocks)}-{len(model.blocks) - 1} of the ViLT stream: "
                                          f"freshly initialised" if len(blocks) < len(model.blocks) else ""))
    if text_path is not None:
        load_text(model.text, text_path, verbose)


def load_meter(path, image_size: int | None = None, num_answers: int | None = None, verbose: bool = True):
    """A ready model from a Ko-METER checkpoint (config in its metadata; Meter or Vilt) or from an
    official METER checkpoint converted to safetensors (config from its shapes). `image_size` resizes
    the position embeddings; `num_answers` sets the VQA head, freshly initialised when it changes."""
    state, metadata = read_safetensors(path)
    layout, _ = detect_layout(state, metadata)
    if layout == "ko-meter":
        cfg = config_from_metadata(metadata, path)
    elif layout == "meter":
        cfg = meter_config(state)
    else:
        raise ValueError(f"{path}: expected a Ko-METER or METER checkpoint, found a {layout} checkpoint")
    overrides = {}
    if image_size is not None:
        overrides["image_size"] = image_size
    if num_answers is not None:
        overrides["num_answers"] = num_answers
    cfg = replace(cfg, **overrides)
    model = build_model(cfg)
    if layout == "ko-meter":
        table, answers_key = [(name, name, None) for name in model.state_dict()], "vqa_head.classifier.weight"
    else:
        table, answers_key = meter_table(cfg), "vqa_classifier.3.weight"
    if answers_key in state and state[answers_key].shape[0] != cfg.num_answers:
        table = [entry for entry in table if not entry[0].startswith("vqa_head.")]  # new answers: new head
    optional = {ours for ours, _, _ in METER_HEADS_TABLE}
    report = apply_table(model, state, table, path, layout, optional=optional)
    if verbose:
        print(report.summary())
    return model


# -----------------------------------------------------------------------------
# Writing the other way: an encoder of ours as the real download's file, through the same tables read backwards.
# pretrain_encoders.py writes the demo's stand-ins for CLIP and KLUE RoBERTa this way, and the training scripts
# then read them with load_clip / load_text, as they read the real ones.

def write_hf_folder(folder, state: dict, config: dict):
    """folder/model.safetensors (Hugging Face's metadata {"format": "pt"}) and folder/config.json."""
    os.makedirs(folder, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu().clone() for name, tensor in state.items()}
    with atomic_path(os.path.join(folder, "model.safetensors")) as temporary:
        save_file(tensors, temporary, metadata={"format": "pt"})
    write_json(os.path.join(folder, "config.json"), config)
    return os.path.join(folder, "model.safetensors")


def save_clip_vision(vision: torch.nn.Module, folder, image_size: int):
    """A ClipVision as Hugging Face CLIP's vision tower alone (CLIPVisionModel): keys vision_model.…, named as in
    the vision half of openai/clip-vit-base-patch16's file, and a CLIPVisionConfig. Returns the weights' path."""
    ours = vision.state_dict()
    state = {theirs: ours[name] for name, theirs, _ in clip_table("hf", "vision_model.", len(vision.blocks))}
    width = vision.embeddings.position_embedding.shape[1]
    config = {"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model", "hidden_size": width,
              "intermediate_size": vision.blocks[0].mlp_in.out_features, "num_hidden_layers": len(vision.blocks),
              "num_attention_heads": vision.blocks[0].attention.num_heads, "image_size": image_size,
              "patch_size": vision.embeddings.patch.kernel_size[0], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    return write_hf_folder(folder, state, config)


def save_roberta(text: torch.nn.Module, folder, pad_id: int = 1):
    """A RobertaText as Hugging Face's RobertaModel without its pooler (as KLUE's file, a RobertaForMaskedLM, has
    none; transformers loads it with add_pooling_layer=False): keys embeddings.… and encoder.layer.N.…, and a
    RobertaConfig. Returns the path of the weights."""
    ours = text.state_dict()
    state = {theirs: ours[name] for name, theirs, _ in roberta_table("", len(text.layers))}
    words, positions = text.embeddings.word.weight.shape, text.embeddings.position.weight.shape
    config = {"architectures": ["RobertaModel"], "model_type": "roberta", "vocab_size": words[0],
              "hidden_size": words[1], "num_hidden_layers": len(text.layers),
              "num_attention_heads": text.layers[0].self_attention.num_heads,
              "intermediate_size": text.layers[0].ffn_in.out_features, "hidden_act": "gelu",
              "max_position_embeddings": positions[0], "type_vocab_size": 1, "pad_token_id": pad_id,
              "layer_norm_eps": 1e-5}
    return write_hf_folder(folder, state, config)


# -----------------------------------------------------------------------------
# A fresh model for the training scripts, and the checks that a model fits the tokenizer and the text length.

def check_vocabulary_fits(tokenizer, rows: int, owner: str):
    """The tokenizer's ids must index the word embeddings: refuse a tokenizer that does not fit."""
    if rows != tokenizer.vocab_size:
        raise ValueError(f"{tokenizer.source}: tokenizer vocabulary of {tokenizer.vocab_size} does not fit the "
                         f"{rows} word embeddings of {owner}")


def text_embedding_rows(text_path) -> int:
    """Number of rows of the word embedding table in a text encoder checkpoint."""
    with safe_open(text_path, "pt") as file:
        for key in file.keys():
            if key.endswith("word_embeddings.weight"):
                return file.get_slice(key).get_shape()[0]
    raise ValueError(f"{text_path}: no word_embeddings.weight, not a RoBERTa checkpoint")


def build_fresh_model(args, tokenizer, rank: int, num_answers: int = 0):
    """A --config / --arch model whose vocabulary is the tokenizer's, seeded by --seed; its encoders from
    --clip / --text when given, else random (warned). A tokenizer that does not fit --text is refused first, one
    that does not fit the model (or a --max-len it cannot take) after."""
    for path, encoder in ((args.clip, "image"), (args.text, "text")):
        if path and not os.path.exists(path):
            made_by = (f" (the demo's: `python pretrain_encoders.py --demo --world {args.world}` makes them)"
                       if getattr(args, "demo", False) else "")
            raise FileNotFoundError(f"{path}: {encoder} encoder checkpoint not found{made_by}")
    if args.text:
        check_vocabulary_fits(tokenizer, text_embedding_rows(args.text), args.text)
    config = CONFIGS[args.config]
    config = replace(config, arch=args.arch, vocab_size=tokenizer.vocab_size, num_answers=num_answers,
                     image_size=args.image_size or config.image_size)
    torch.manual_seed(args.seed)
    model = build_model(config)
    if args.clip or args.text:
        initialise_encoders(model, clip_path=args.clip, text_path=args.text, verbose=rank == 0)
    for flag, path, encoder in [("--clip", args.clip, "image"), ("--text", args.text, "text")]:
        if path is None and rank == 0:
            print(f"warning: no {flag}: the {encoder} encoder starts from random weights", file=sys.stderr)
    check_model_fits(model, tokenizer, args.max_len)
    return model


def check_model_fits(model, tokenizer, max_len: int):
    """Refuse a tokenizer or a text length the model cannot take."""
    check_vocabulary_fits(tokenizer, model.cfg.vocab_size, "the model")
    if tokenizer.pad_id != model.cfg.pad_id:  # RoBERTa's positions count from the pad id (model.TextEmbeddings)
        raise ValueError(f"{tokenizer.source}: [PAD] is id {tokenizer.pad_id}, the model's pad id is {model.cfg.pad_id}")
    if max_len > model.cfg.max_positions - 2:
        raise ValueError(f"--max-len {max_len} exceeds the {model.cfg.max_positions - 2} text positions of the model")


# -----------------------------------------------------------------------------
# Command line: inspect and convert.

def inspect(path):
    state, metadata = read_safetensors(path)
    layout, prefix = detect_layout(state, metadata)
    print(f"file: {path}\nlayout: {layout}" + (f" (keys under '{prefix}')" if prefix else ""))
    if layout == "ko-meter":
        cfg = config_from_metadata(metadata, path)
    else:
        try:  # the configuration follows from the shapes of a few tensors the layout must have
            cfg = meter_config(state) if layout == "meter" else None
            config = cfg or (clip_config(state, layout, prefix) if layout.startswith("clip")
                             else roberta_config(state, prefix))
        except ValueError as error:
            raise ValueError(f"{path}: {layout} layout, but {error}") from None
    if layout in ("ko-meter", "meter"):
        print("config: " + json.dumps(cfg.to_dict()))
        counts = count_parameters(build_model(cfg))
        print("parameters: " + ", ".join(f"{part} {count:,}" for part, count in counts.items()))
        return
    print("config: " + json.dumps(config))
    total = sum(tensor.numel() for tensor in state.values())
    used = sum(tensor.numel() for key, tensor in state.items() if key.startswith(prefix))
    part = "vision tower" if layout.startswith("clip") else "text encoder"
    print(f"parameters: {part} {used:,}, whole file {total:,}")


def convert(source, target):
    """A pickled checkpoint (.bin / .pt / .ckpt; a Lightning checkpoint's state_dict) -> safetensors."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source}: no such file")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        global_name = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        if global_name or "allowed global" in message:
            what = global_name.group(1) if global_name else "a Python object"
            raise ValueError(f"{source}: refused, loading it would run code from the file ({what}); only tensors "
                             f"and plain containers are accepted") from None
        raise ValueError(f"{source}: not a PyTorch checkpoint (unreadable pickle)") from None
    except (RuntimeError, EOFError) as error:
        raise ValueError(f"{source}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]})") from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{source}: holds a {type(loaded).__name__}, not a state dict")
    tensors = {key: value.contiguous().clone() for key, value in state.items() if isinstance(value, torch.Tensor)}
    skipped = sorted(key for key in state if key not in tensors)
    if not tensors:
        raise ValueError(f"{source}: no tensors found")
    with atomic_path(target) as temporary:
        save_file(tensors, temporary)
    print(f"wrote {len(tensors)} tensors to {target}" + (f"; skipped non-tensor entries: {skipped}" if skipped else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Inspect or convert checkpoints for Ko-METER.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect_parser = commands.add_parser("inspect", help="layout, config read from shapes, parameters per part")
    inspect_parser.add_argument("file", help="a .safetensors file")
    convert_parser = commands.add_parser("convert", help="pickled .bin/.pt/.ckpt -> .safetensors (weights only)")
    convert_parser.add_argument("source", help="the .bin / .pt / .ckpt file")
    convert_parser.add_argument("target", help="the .safetensors file to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            inspect(args.file)
        else:
            convert(args.source, args.target)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

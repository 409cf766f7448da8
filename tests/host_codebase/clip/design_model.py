"""CLIP's model, modified like the PromptSRC codebase's: the model needs the trainer's
`design_details` (a dict naming the trainer and its prompt depths / lengths), so OpenAI's
`build_model(state_dict)` or `CLIP(...)` without it is a TypeError."""
from ._openai import openai

_upstream = openai.model

LayerNorm = _upstream.LayerNorm
QuickGELU = _upstream.QuickGELU
Transformer = _upstream.Transformer
VisionTransformer = _upstream.VisionTransformer
convert_weights = _upstream.convert_weights


class CLIP(_upstream.CLIP):
    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers,
                 design_details):
        super().__init__(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                         context_length, vocab_size, transformer_width, transformer_heads, transformer_layers)
        self.design_details = _checked(design_details)


def _checked(design_details):
    missing = {"trainer", "vision_depth", "language_depth", "vision_ctx", "language_ctx"} - set(design_details)
    if missing:
        raise KeyError(f"design_details lacks {sorted(missing)}")
    return dict(design_details)


def as_host_clip(model, design_details):
    """An OpenAI CLIP built by the installed package, as this package's CLIP."""
    model.__class__ = CLIP
    model.design_details = _checked(design_details)
    return model


def build_model(state_dict: dict, design_details):
    return as_host_clip(_upstream.build_model(state_dict), design_details)

"""The fixture host's own `clip` package, shadowing the installed one from the host's root.

Like the PromptSRC codebase's vendored CLIP, `build_model(state_dict, design_details)` needs a
`design_details` dict; called OpenAI's way it is a TypeError. It holds no model code: it wraps
the installed OpenAI `clip` package, loaded by file path (`_openai.py`).
"""
from .clip import *  # noqa: F401,F403
from .clip import _MODELS, _download, build_model  # noqa: F401
from . import design_model as model  # noqa: F401  (clip.model, as a vendored CLIP has it)

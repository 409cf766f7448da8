"""Text templates.

* `IMAGENET_TEMPLATES`: OpenAI's 80 ImageNet templates (CLIP's prompt-engineering notebook),
  the zero-shot CLIP baseline's ensemble (`ZeroshotCLIP`, TRAINER.ZEROSHOT.ENSEMBLE).
* `PROMPTSRC_TEMPLATES`: the 60 of them that PromptSRC's text regulariser averages over (the
  published PromptSRC, hence the paper's PromptKD teacher): the 80 minus the 20 below.
* `OPENAI7_TEMPLATES`: the 7 of the 80 OpenAI's notebook recommends for ImageNet.
* `TEMPLATE_SETS` / `template_set(spec)`: the sets by name, or a file of templates, for a
  zero-shot teacher's export (TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES).
"""

IMAGENET_TEMPLATES = [
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.",
    "a bright photo of the {}.", "a cropped photo of a {}.", "a plastic {}.",
    "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.",
    "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
]
assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80

# In OpenAI's 80 but not in PromptSRC's 60.
_NOT_IN_PROMPTSRC = {
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
}
PROMPTSRC_TEMPLATES = [t for t in IMAGENET_TEMPLATES if t not in _NOT_IN_PROMPTSRC]
assert len(PROMPTSRC_TEMPLATES) == 60 and _NOT_IN_PROMPTSRC <= set(IMAGENET_TEMPLATES)

# The 7 of the 80 that OpenAI's prompt-engineering notebook found best on ImageNet (its
# "ensembling" section): the ensemble many zero-shot teachers use for speed.
OPENAI7_TEMPLATES = [
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
]
assert set(OPENAI7_TEMPLATES) <= set(IMAGENET_TEMPLATES)

#: Template sets by name (TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES); a text file works too.
TEMPLATE_SETS = {
    "imagenet80": IMAGENET_TEMPLATES,
    "promptsrc60": PROMPTSRC_TEMPLATES,
    "openai7": OPENAI7_TEMPLATES,
    "photo": ["a photo of a {}."],
}


def template_set(spec: str, key: str = "TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES") -> list[str]:
    """The templates `spec` names: a set of TEMPLATE_SETS, or a text file with one template per
    line ('{}' where the class name goes; blank lines and lines starting with '#' are skipped).
    Anything else is a ConfigError naming `key`, the value and the choices."""
    from .errors import ConfigError, MissingFileError  # noqa: PLC0415  (import promptkd.templates stays light)

    spec = str(spec).strip()
    if spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    import os  # noqa: PLC0415

    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
        kind = MissingFileError if (os.sep in spec or spec.endswith(".txt")) else ConfigError
        raise kind(f"{key} '{spec}' is neither a template set ({', '.join(TEMPLATE_SETS)}) nor a text file of "
                   "templates (one per line, '{}' for the class name).")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    templates = [t for t in lines if t and not t.startswith("#")]
    if not templates:
        raise ConfigError(f"{key}: {path} holds no templates; write one per line, '{{}}' for the class name.")
    for n, t in enumerate(templates):
        try:
            ok = t.count("{}") == 1 and t.format("x") != t
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{key}: template {n + 1} of {path}, '{t}', needs exactly one '{{}}' (where the class "
                              "name goes) and no other braces.")
    return templates

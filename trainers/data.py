"""Data loading shared by our trainers: Dassl's loaders, with unreadable images named.

Dassl's `DatasetWrapper` reads images inside DataLoader workers, so a truncated or broken
file kills training with PIL's bare `OSError: Truncated File Read` and no file name.
`CheckedDatasetWrapper` catches a failure of the image read itself (open, decode, convert to
RGB; never the transform, whose errors are bugs or config errors and propagate unchanged) in
the worker and hands the main process a marker instead (`collate_checked` keeps it beside the good images of the batch); the trainer
(`PromptTrainer.screen_batch`) then either stops with a `DataError` naming the file, the
split and how to check the whole dataset, or, with `DATALOADER.SKIP_UNREADABLE True`, drops
the image, counts it and lists it in the log at the end of the epoch; more than
DATALOADER.MAX_UNREADABLE_SHARE of a split unreadable stops the run (`too_many_unreadable`).

Loaders built elsewhere (other samplers, other datasets) get the same behaviour by using
`CheckedDatasetWrapper` (or a subclass) and `collate_checked`.
"""
from __future__ import annotations

from dassl.data.data_manager import DatasetWrapper
from dassl.data.transforms import build_transform
from PIL import Image
from torch.utils.data import default_collate
from torchvision import transforms as T

from promptkd.backbones import RESIZE_MODES
from promptkd.decode import DECODERS, read_tensor, tensor_transform
from promptkd.errors import ConfigError, DataError

UNREADABLE = "unreadable"  # batch key: [(image path, reason), ...]
CHECK_HINT = "promptkd check --root {root} {dataset}"


class CheckedDatasetWrapper(DatasetWrapper):
    """Dassl's wrapper; an image that cannot be read becomes a marker, not a worker crash.

    Only reading the file is guarded: what the transform raises (a bug, a ConfigError)
    propagates as it is, so it is never reported as an unreadable image."""

    split = "train"  # set by the trainer for the message

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        super().__init__(cfg, data_source, transform=transform, is_train=is_train)
        # INPUT.DECODER torchvision: training images decoded to tensors and augmented by the
        # transforms v2 that do what the PIL transform does (promptkd/decode.py)
        self.tensor_transform = train_tensor_transform(cfg, transform) if is_train else None

    def __getitem__(self, idx):
        # Dassl's DatasetWrapper.__getitem__, with the read separated from the transforms.
        item = self.data_source[idx]
        try:
            img0 = read_image(item.impath) if self.tensor_transform is None else read_tensor(item.impath)
        except MemoryError:
            raise
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
            return {UNREADABLE: (item.impath, f"{type(err).__name__}: {err}")}
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        if self.tensor_transform is not None:
            output["img"] = self.tensor_transform(img0)
        elif self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)  # without any augmentation
        return output


def train_tensor_transform(cfg, transform):
    """INPUT.DECODER: None for "pil", else the tensor pipeline of `transform` (checked)."""
    decoder = cfg.INPUT.get("DECODER", "pil")
    if decoder not in DECODERS:
        raise ConfigError(f"INPUT.DECODER is '{decoder}'; use one of {', '.join(DECODERS)}.")
    if decoder == "pil" or transform is None:
        return None
    if isinstance(transform, (list, tuple)) or cfg.DATALOADER.K_TRANSFORMS != 1 or cfg.DATALOADER.RETURN_IMG0:
        raise ConfigError("INPUT.DECODER torchvision runs one train transform per image: it does not take several "
                          "transforms, DATALOADER.K_TRANSFORMS other than 1 or DATALOADER.RETURN_IMG0; set "
                          "INPUT.DECODER pil for them.")
    return tensor_transform(transform)


def read_image(path: str) -> Image.Image:
    """The image at `path`, fully decoded, in RGB (Dassl's read_image, closing the file)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def collate_checked(items: list[dict]) -> dict:
    """Default collation of the readable items; the unreadable ones listed under UNREADABLE."""
    good = [it for it in items if UNREADABLE not in it]
    bad = [it[UNREADABLE] for it in items if UNREADABLE in it]
    batch = default_collate(good) if good else {}
    batch[UNREADABLE] = bad
    return batch


def check_loader(loader, split: str):
    """Make a Dassl-built loader report unreadable images (in place); returns it."""
    if loader is not None and isinstance(loader.dataset, CheckedDatasetWrapper):
        loader.dataset.split = split
        loader.collate_fn = collate_checked
    return loader


def unreadable_error(path: str, reason: str, split: str, cfg) -> DataError:
    hint = CHECK_HINT.format(root=cfg.DATASET.ROOT, dataset=cfg.DATASET.NAME)
    return DataError(
        f"cannot read image {path} ({split} split of {cfg.DATASET.NAME}): {reason}. Replace or remove "
        f"the file; to check every image of the dataset run `{hint}`; to skip unreadable images "
        "instead (they are counted and listed in the log), set DATALOADER.SKIP_UNREADABLE True.")


def too_many_unreadable(count: int, total: int, examples: list, split: str, cfg, so_far: bool) -> DataError:
    """More than DATALOADER.MAX_UNREADABLE_SHARE of a split's images were skipped as unreadable.

    `examples`: [(path, reason), ...], the first few; `so_far`: the pass is not over yet (the
    count can only grow, so the share is already over the limit)."""
    limit = cfg.DATALOADER.MAX_UNREADABLE_SHARE
    hint = CHECK_HINT.format(root=cfg.DATASET.ROOT, dataset=cfg.DATASET.NAME)
    shown = "; ".join(f"{p} ({r})" for p, r in examples[:5])
    more = f" and {count - len(examples[:5])} more" if count > len(examples[:5]) else ""
    return DataError(
        f"{'at least ' if so_far else ''}{count} of the {total} images of the {split} split of {cfg.DATASET.NAME} "
        f"are unreadable ({100.0 * count / max(total, 1):.1f}%), more than "
        f"DATALOADER.MAX_UNREADABLE_SHARE {limit:g} ({100.0 * limit:g}%) allows with "
        f"DATALOADER.SKIP_UNREADABLE True: {shown}{more}. Replace or remove the files (`{hint}` lists every "
        "bad image), or raise DATALOADER.MAX_UNREADABLE_SHARE to use the rest.")



def test_transform(cfg):
    """The evaluation transform: Dassl's (resize the shorter side, centre-crop INPUT.SIZE, to
    tensor, normalise) for INPUT.RESIZE_MODE "shortest"; for "squash" its resize and crop are
    one resize of the whole image to INPUT.SIZE."""
    mode = cfg.INPUT.RESIZE_MODE
    if mode not in RESIZE_MODES:
        raise ConfigError(f"INPUT.RESIZE_MODE is '{mode}'; use one of {', '.join(RESIZE_MODES)}.")
    transform = build_transform(cfg, is_train=False)
    if mode == "squash":
        resize, crop = transform.transforms[:2]
        if not (isinstance(resize, T.Resize) and isinstance(crop, T.CenterCrop)):
            raise RuntimeError(f"Dassl's test transform no longer starts with Resize, CenterCrop: {transform}")
        transform.transforms[:2] = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=resize.interpolation)]
    return transform

"""INPUT.DECODER torchvision (issue 37 item 15): decode_jpeg + the transforms v2 on tensors, with
the augmentation semantics of the PIL path Dassl builds from INPUT.*.

The claim is strong on purpose: the same generator state gives the same crop box and flip on
both paths (so a seeded view is the same crop), and the pixels then differ only by the
resampling arithmetic. Pixel tolerance: both paths round the resampled image to uint8 (PIL's
bicubic, torch's antialiased bicubic with PIL's kernel), so the values may differ by a rounding
step and a little kernel arithmetic: at most 3 levels of 255 per pixel and 0.2 levels on average
(measured: 2 and 0.03). A crop box off by one pixel at 224 from a 500-wide image already moves
the mean by several levels, so this tolerance tells a different box from the same one.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from promptkd.decode import read_tensor, tensor_transform
from promptkd.errors import ConfigError

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MAX_LEVELS, MEAN_LEVELS = 3.0, 0.2


def photo(path, w=500, h=375, seed=0):
    """A JPEG with structure at several scales and noise (a box or flip mismatch shows)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(np.sin(xx / 17) + np.cos(yy / 23)) * 60 + 128, xx * 0.5, (yy * 0.6 + xx * 0.1) % 255], -1)
    Image.fromarray((img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def pil_train(size=224, scale=(0.08, 1.0)):
    """The PIL pipeline of INPUT.TRANSFORMS random_resized_crop, random_flip, normalize (Dassl's)."""
    return T.Compose([T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def levels(a, b):
    """|a - b| in levels of 255 of the un-normalised pixels."""
    return (a - b).abs() * torch.tensor(STD)[:, None, None] * 255


def test_decode_jpeg_gives_pils_pixels(tmp_path):
    path = photo(str(tmp_path / "a.jpg"))
    with Image.open(path) as im:
        ref = torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
    got = read_tensor(path)
    assert got.dtype == torch.uint8 and got.shape == ref.shape
    assert (got.int() - ref.int()).abs().max() <= 1  # both libjpeg-turbo; measured 0
    Image.fromarray(ref.permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    assert torch.equal(read_tensor(str(tmp_path / "a.png")), ref)  # PNG: lossless
    Image.fromarray(ref.permute(1, 2, 0).numpy()).save(tmp_path / "a.bmp")
    assert torch.equal(read_tensor(str(tmp_path / "a.bmp")), ref)  # other formats through PIL


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.5, 1.0)])
def test_same_generator_same_crop_and_flip(tmp_path, scale):
    path = photo(str(tmp_path / "a.jpg"))
    pil, tensor = pil_train(scale=scale), tensor_transform(pil_train(scale=scale))
    image, data = Image.open(path).convert("RGB"), read_tensor(path)
    worst, means = 0.0, []
    for seed in range(40):
        torch.manual_seed(seed)
        a = pil(image)
        after_a = torch.rand(1)
        torch.manual_seed(seed)
        b = tensor(data)
        assert torch.rand(1) == after_a  # the same random numbers consumed
        d = levels(a, b)
        worst, means = max(worst, d.max().item()), means + [d.mean().item()]
    assert worst <= MAX_LEVELS and np.mean(means) <= MEAN_LEVELS, (worst, np.mean(means))
    # the check can fail: another seed's crop (another box) is far off
    torch.manual_seed(0)
    a = pil(image)
    torch.manual_seed(1)
    assert levels(a, tensor(data)).mean() > 5 * MEAN_LEVELS * 10


def test_other_steps_are_refused():
    with pytest.raises(ConfigError, match="ColorJitter.*INPUT.DECODER pil"):
        tensor_transform(T.Compose([T.ColorJitter(0.4), T.ToTensor()]))


# --- through the trainers' loaders -------------------------------------------------------------

def view_datasets(data_root, clip_files, teacher_run, tmp_path, *extra):
    from tests.trainer_kit import make_trainer, student_args
    out = {}
    for decoder in ("pil", "torchvision"):
        trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path / decoder), teacher_run["export"],
                                            "INPUT.DECODER", decoder, *extra, epochs=1))
        out[decoder] = trainer
    return out


def test_decoder_key_through_a_run(data_root, clip_files, teacher_run, tmp_path):
    """A PromptKD student with INPUT.DECODER torchvision: its seeded views are the PIL path's
    crops (same tolerance), the view description (the teacher cache's identity) names the
    decoder, and the run trains; an unknown value is refused."""
    from tests.trainer_kit import make_trainer, student_args
    trainers = view_datasets(data_root, clip_files, teacher_run, tmp_path)
    pil, tv = (trainers[d].view_dataset for d in ("pil", "torchvision"))
    assert tv.tensor_transform is not None and pil.tensor_transform is None
    assert tv.description[:-1] == pil.description and "torchvision" in tv.description[-1]
    for key in [(0, 0), (1, 3), (2, 5)]:
        a, b = pil[key]["img"], tv[key]["img"]
        assert a.shape == b.shape and levels(a, b).mean() <= MEAN_LEVELS * 5, key  # small images: fewer pixels
    trainers["torchvision"].train()
    with pytest.raises(ConfigError, match="INPUT.DECODER is 'cv2'"):
        make_trainer(student_args(data_root, clip_files, str(tmp_path / "bad"), teacher_run["export"],
                                  "INPUT.DECODER", "cv2", epochs=1))
    assert os.path.isdir(tmp_path / "torchvision")

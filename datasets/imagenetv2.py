"""ImageNetV2 matched-frequency (``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``).

Test only. The folder number is the ImageNet label; names come from ImageNet's
``classnames.txt``, copied into ``imagenetv2/``.
"""
import os.path as osp


from .common import EvalOnlyDataset, list_images, list_subdirs, read_classnames


class ImageNetV2(EvalOnlyDataset):
    """10 images for each of the 1000 ImageNet classes."""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def read_test(self):
        names = list(read_classnames(self.path("classnames.txt")).values())
        folders = sorted((f for f in list_subdirs(self.image_dir) if f.isdigit()), key=int)
        items = []
        for folder in folders:
            label = int(folder)
            class_dir = osp.join(self.image_dir, folder)
            for imname in list_images(class_dir):
                items.append(self.datum(osp.join(class_dir, imname), label, names[label]))
        return items

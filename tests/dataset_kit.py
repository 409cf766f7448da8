"""Helpers of the dataset-loader tests (test_datasets.py, test_folder_and_check.py): what the
loaders must give for the fakes of tests/fake_data.py, and a Dassl config for one dataset
config file of configs/datasets with our keys.
"""
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# The class names (in label order) the loaders must give for the default fakes: these encode
# CoOp's renaming rules.
EXPECTED_CLASSNAMES = {
    "imagenet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    # sorted folders (upper case first), BACKGROUND_Google / Faces_easy dropped, renamed
    "caltech101": ["face", "leopard", "motorbike", "accordion", "airplane"],
    "oxford_pets": ["abyssinian", "american_bulldog", "bengal", "basset_hound", "british_shorthair"],
    # year moved to the front
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Audi TTS Coupe",
                      "2012 BMW M3 Coupe", "2012 Chevrolet Corvette ZR1"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                       "english marigold"],
    "food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare"],
    "fgvc_aircraft": ["707-320", "Boeing 717", "A300B4", "F/A-18", "Tu-134"],
    # path parts after the letter, reversed
    "sun397": ["abbey", "shop bakery", "outdoor apartment_building", "bedroom", "indoor church"],
    "dtd": ["banded", "blotchy", "braided", "bubbly", "bumpy"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                "Industrial Buildings"],
    # CamelCase -> words joined by "_"
    "ucf101": ["Apply_Eye_Makeup", "Archery", "Baby_Crawling", "Yo_Yo", "Playing_Daf"],
    "imagenetv2": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    "imagenet_sketch": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark"],
    # only the wnids with a folder, in classnames.txt order, relabelled 0..K-1
    "imagenet_a": ["tench", "great white shark", "tiger shark", "electric ray", "stingray"],
    "imagenet_r": ["tench", "great white shark", "tiger shark", "electric ray", "stingray"],
}


def make_cfg(root, key, subsample="all", shots=0, seed=1):
    from dassl.config import get_cfg_default

    from promptkd.trainers.config import extend_cfg
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(REPO, "configs", "datasets", f"{key}.yaml"))
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    cfg.VERBOSE = False
    return cfg

"""EuroSAT RGB (CoOp layout: ``eurosat/2750/<Class>/``)."""

from .common import FolderPerClassDataset

# CoOp's phrases for the folder names (used as class names in the prompts).
NEW_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


class EuroSAT(FolderPerClassDataset):
    """10 land-use classes of Sentinel-2 patches, split 50/20/30 per class."""

    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    new_classnames = NEW_CLASSNAMES

"""Deep-learning models: the only part of napari_dlvision that imports torch.

This package's ``__init__`` stays torch-free so that callers can name model
kinds (for dispatch on a model file's ``kind``) without paying for torch;
the submodules import torch when they are imported.
"""

PIXEL_UNET_KIND = "pixel-unet"

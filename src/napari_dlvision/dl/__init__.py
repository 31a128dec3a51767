"""Deep-learning models: the only part of napari_dlvision that imports torch.

The submodules import torch when they are imported; this ``__init__`` stays
empty so that naming the package costs nothing.
"""

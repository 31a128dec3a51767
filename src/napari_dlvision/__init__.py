"""Train vision models by hand-annotating images in napari.

napari imports this module at start-up, so it holds the version only; every
manifest entry points at a submodule.
"""

__version__ = "0.1.0"

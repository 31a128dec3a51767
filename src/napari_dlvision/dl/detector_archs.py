"""Names of the detector architectures, importable without torch (the CLI's choices, the widget's list).

dl/detector.py, dl/tv_detectors.py and core/box_regions.py build them; a test keeps the lists equal.
"""

TORCHVISION_ARCHS = ("fcos-mobilenet", "fasterrcnn-mobilenet", "fcos-resnet50", "fasterrcnn-resnet50")
FOREST = "forest"  # no network: a pixel random forest taught by the boxes (core/box_regions.py)
AUTO = "auto"  # chosen from the boxes when training starts (core.box_regions.choose_arch); never in a model file
MODEL_ARCHS = ("centernet", FOREST) + TORCHVISION_ARCHS
ARCHS = (AUTO,) + MODEL_ARCHS
DEFAULT_ARCH = AUTO
PRETRAINED = ("none", "cache", "download")
NOT_EXPORTED = "a forest detector is a random forest, not a network: export is for torch models"

"""Names of the detector architectures, importable without torch (the CLI's choices, the widget's list).

dl/detector.py and dl/tv_detectors.py build them; a test keeps the lists equal.
"""

TORCHVISION_ARCHS = ("fcos-mobilenet", "fasterrcnn-mobilenet", "fcos-resnet50", "fasterrcnn-resnet50")
ARCHS = ("centernet",) + TORCHVISION_ARCHS
DEFAULT_ARCH = "centernet"
PRETRAINED = ("none", "cache", "download")

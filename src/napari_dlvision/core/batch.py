"""Apply a saved model to images and files: shared by the CLI and the GUI."""

from __future__ import annotations

from pathlib import Path

from . import modelfile
from .errors import ModelFileError, UserInputError
from .io import channel_axis_for, read_image, write_tif
from .pixel_classifier import KIND as RF_KIND, PixelClassifier, segmentation, uncertainty

OUTPUTS = ("segmentation", "probabilities", "uncertainty", "instances")


def load_model(path):
    """Load any napari-dlvision model file, whatever its kind."""
    from ..dl import PIXEL_UNET_KIND

    kind = modelfile.read_metadata(path).get("kind")
    if kind == RF_KIND:
        return PixelClassifier.load(path)
    if kind == PIXEL_UNET_KIND:
        from ..dl.segmenter import UNetSegmenter  # imports torch: only for U-Net files

        return UNetSegmenter.load(path)
    raise ModelFileError(f"{path} holds a {kind!r} model, which this version cannot apply")


def outputs_from_probabilities(model, prob, wanted=OUTPUTS, foreground=None, spacing=None) -> dict:
    """Derive the requested result arrays from class probabilities (K, *spatial)."""
    seg = segmentation(prob)
    out = {"segmentation": seg}
    if "probabilities" in wanted:
        out["probabilities"] = prob
    if "uncertainty" in wanted:
        out["uncertainty"] = uncertainty(prob)
    if "instances" in wanted:
        out["instances"] = model.instances(prob, spacing=spacing, foreground=foreground)
    return out


def predict_file(model, path, channel_axis=None, spacing=None, wanted=OUTPUTS, foreground=None) -> dict:
    image = read_image(path)
    if channel_axis is None:
        channel_axis = channel_axis_for(image.shape, model.ndim, model.n_channels)
    prob = model.predict_proba(image, channel_axis, spacing)
    return outputs_from_probabilities(model, prob, wanted, foreground, spacing)


def iter_predict_folder(model, files, out_dir, wanted=("segmentation",), foreground=None,
                        channel_axis=None, spacing=None):
    """Predict each file and write `<out_dir>/<stem>_<output>.tif`; yields (done, total, path)."""
    stems = [Path(p).stem for p in files]
    if len(set(stems)) != len(stems):
        raise UserInputError("several input files share a name (e.g. a.png and a.tif): outputs would collide")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files, 1):
        results = predict_file(model, path, channel_axis, spacing, wanted, foreground)
        for name in wanted:
            write_tif(out_dir / f"{Path(path).stem}_{name}.tif", results[name])
        yield i, len(files), Path(path)


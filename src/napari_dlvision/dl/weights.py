"""A model file's `weights.pt`: a plain state dict of tensors, never anything else.

torch.load with weights_only=True refuses pickled globals (no code runs);
on top of that the result must be a flat mapping from names to finite,
dense tensors. Every failure is one ModelFileError line with a short
reason: torch's own messages span paragraphs and advise weights_only=False,
which is exactly what a model from elsewhere must never get.
"""

from __future__ import annotations

import io
import re
import warnings

import torch

from ..core.errors import ModelFileError

# Lines of torch's messages that are advice or boilerplate, not the reason.
_BOILERPLATE = re.compile(
    r"weights.only|trusted source|file an issue|check the documentation|add_safe_globals|safe_globals"
    r"|in pytorch 2\.6|this file can still be loaded|re-running",
    re.I,
)
_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64,
           torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool}


def _reason(e: BaseException, limit: int = 120) -> str:
    """The first sentence of a torch exception that is a reason, not advice."""
    for line in str(e).splitlines():
        line = line.replace("WeightsUnpickler error:", "").strip()
        for sentence in re.split(r"(?<=\.)\s+", line):
            if sentence and not _BOILERPLATE.search(sentence):
                return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."
    if isinstance(e, EOFError):  # an empty or cut file: torch gives no message
        return "the data ends early"
    return type(e).__name__


def _refuse(path, reason: str):
    raise ModelFileError(f"{path}: weights.pt is not a plain tensor state dict ({reason})")


def state_dict_from_bytes(data: bytes, path) -> dict[str, torch.Tensor]:
    """The state dict in `data` (weights.pt of the model file `path`), on the CPU, checked.

    Raises ModelFileError for anything but a mapping of str to finite,
    dense (strided) tensors of plain numeric dtypes.
    """
    try:
        # weights_only: only tensors and plain containers are rebuilt; a
        # pickled object with __reduce__ is refused before it can run.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "unusual pickle protocol": noise on stderr
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - whatever torch raises, the file is bad
        _refuse(path, _reason(e))
    if not isinstance(state, dict):
        _refuse(path, f"it holds a {type(state).__name__}, not a dict")
    if not state:
        _refuse(path, "it is empty")
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            _refuse(path, f"key {key!r} is not a string")
        shown = key if len(key) <= 60 else key[:57] + "..."
        if not isinstance(value, torch.Tensor):
            _refuse(path, f"{shown} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.dtype not in _DTYPES:
            _refuse(path, f"{shown} is a {value.dtype} {value.layout} tensor, not plain numbers")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            _refuse(path, f"{shown} holds NaN or infinite values")
        out[key] = value
    return out


def state_dict_to_bytes(module_or_state) -> bytes:
    """weights.pt for a module (or a state dict): detached CPU copies of its tensors."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    return buf.getvalue()


def save_model_with_weights(path, model, what: str):
    """A model file holding `model.metadata()` and `model.net`'s weights; `what` names it in the error."""
    from ..core import modelfile
    from ..core.errors import UserInputError

    if model.net is None:
        raise UserInputError(f"train the {what} before saving it")
    return modelfile.save(path, model.metadata(), {}, extra={"weights.pt": state_dict_to_bytes(model.net)})


def load_weights_into(net, extra: dict, path, what: str):
    """Put the file's `weights.pt` into `net` (built from the checked metadata), in eval mode."""
    if "weights.pt" not in extra:
        raise ModelFileError(f"{path} is a damaged {what} (no weights.pt inside)")
    state = state_dict_from_bytes(extra["weights.pt"], path)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: weights.pt does not fit the architecture ({first})") from None
    net.eval()
    return net


def adopt_unet(model, meta: dict, n_out: int) -> None:
    """Give `model` (a U-Net segmenter or denoiser being loaded) the network its
    file's metadata describes, with the fields both kinds share: config,
    channels, dimensions, spacing, training report and metrics. The network's
    size is bounded before anything is allocated; one that does not match the
    file's channels, dimensions or `n_out` outputs is refused. Weights come
    after, with `load_weights_into`."""
    from ..core import modelfile
    from ..core.images import check_spacing
    from .unet import UNet

    field = modelfile.field
    net = UNet.from_architecture(field(meta, "architecture", dict))  # bounded: refuses absurd sizes
    if (net.in_channels, net.ndim, net.n_classes) != (meta["n_channels"], meta["ndim"], n_out):
        raise ValueError("architecture does not match the channels, dimensions or outputs")
    model.config = {"depth": net.depth, "base_channels": net.base_channels, "norm": net.norm}
    model.net, model.n_channels, model.ndim = net, net.in_channels, net.ndim
    spacing = meta.get("spacing")
    model.spacing = None if spacing is None else list(check_spacing(spacing, net.ndim))
    model.training = field(meta, "training", dict, optional=True, default={})
    model.metrics = field(meta, "metrics", dict, optional=True, default={})

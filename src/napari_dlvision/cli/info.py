"""Print what a model file holds (its JSON description), after checking all of it.

    dlvision info MODEL
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p):
    p.add_argument("model", type=Path)


def run(args):
    from .. import kinds
    from ..core.modelfile import read_metadata

    # Load the whole model, not only its JSON: a file whose arrays or weights
    # are damaged or hostile is refused here too.
    kinds.load_model(args.model, device="cpu")
    print(json.dumps(read_metadata(args.model), indent=2, sort_keys=True))

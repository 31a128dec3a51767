"""Run a training run file (written by the widgets' "Export run…"), unchanged.

    dlvision run RUN.json [EXTRA ARGS]      # e.g. --device cuda, --time-limit 600
    torchrun --nproc-per-node 4 -m napari_dlvision.cli run RUN.json --distributed

Paths in the file are relative to its folder; extra arguments are appended
to its command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(p):
    p.add_argument("runfile", type=Path)
    p.add_argument("extra", nargs=argparse.REMAINDER, help="arguments appended to the file's command")


def run(args):
    from ..core.runfile import read_run
    from . import build_parser

    command = read_run(args.runfile) + list(args.extra)
    inner = build_parser().parse_args(command)
    if getattr(inner, "distributed", False):
        from . import _run_distributed

        with _in_folder(args.runfile.resolve().parent):
            return _run_distributed(inner)
    with _in_folder(args.runfile.resolve().parent):
        inner.run(inner)


class _in_folder:
    """cd into the run file's folder for the run, back afterwards."""

    def __init__(self, folder):
        self.folder, self.before = folder, None

    def __enter__(self):
        self.before = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc):
        os.chdir(self.before)

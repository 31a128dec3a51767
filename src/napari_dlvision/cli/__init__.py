"""`dlvision`: the plugin's models, headless.

    dlvision train rf --image IMG --labels LBL --out MODEL [--features ...]
    dlvision train unet --image IMG --labels LBL --out MODEL [--steps N] [--time-limit S]
    dlvision predict --model MODEL --image IMG --out SEG.tif [--probabilities P.tif]
    dlvision evaluate --model MODEL ...
    dlvision info MODEL
    dlvision export --model MODEL --format onnx --out MODEL.onnx
    dlvision run RUN.json [EXTRA ARGS]

`train` has one sub-command per registered model kind (napari_dlvision.kinds);
each kind's module adds its options and runs its training. Errors the user
can fix end the program with status 1 and one line on stderr; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import signal
import sys
from concurrent.futures import BrokenExecutor

from .. import __version__


RAW = argparse.RawDescriptionHelpFormatter  # descriptions hold example command lines: keep their lines


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 1 like every other error."""

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import kinds

    p = Parser(prog="dlvision", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"napari-dlvision {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser("train", help="train a model")
    tsub = train.add_subparsers(dest="kind", required=True, parser_class=Parser)
    for kind in kinds.KINDS.values():
        module = importlib.import_module(kind.cli)
        sp = tsub.add_parser(kind.command, help=kind.title, description=module.__doc__, formatter_class=RAW)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)

    from . import evaluate, export, info, predict, run

    for name, module in (("predict", predict), ("evaluate", evaluate), ("info", info), ("export", export),
                         ("run", run)):
        sp = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__, formatter_class=RAW)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a batch scheduler, systemd): unwound like Ctrl-C, so
    temporary outputs are removed on the way out."""


def _terminated(signum, frame):
    raise Terminated


def main(argv=None) -> int:
    """The `dlvision` command; `argv` None: this process is the command (see _end_at_exit)."""
    if argv is None:
        signal.signal(signal.SIGTERM, _terminated)
        atexit.register(_end_at_exit)  # registered first, so it runs after every library's own atexit work
        sys.stdout = _OutlivesItsReader(sys.stdout)
    code = _main(argv)
    if argv is None:
        # The command's work is done and written: a Ctrl-C during the interpreter's
        # teardown would only print a KeyboardInterrupt traceback from torch's finalisers.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        global _exit_status
        _exit_status = code
    return code


class _OutlivesItsReader:
    """stdout whose reader may leave (`dlvision train ... | head -1`): the work goes on.

    The progress lines are for the reader; the command's outputs are files. A
    reader that quits early used to stop a training or a folder run halfway
    (BrokenPipeError), with nothing or only some files written, and exit 0.
    Once the pipe is broken, stdout goes to /dev/null and the command finishes.
    """

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()

    def _reader_left(self):
        # The buffered text that failed is flushed later into /dev/null, not retried on the pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def __getattr__(self, name):  # fileno, isatty, encoding...: the real stream's
        return getattr(self._stream, name)


_exit_status: int | None = None  # the finished command's status, once main() has returned it


def _end_at_exit() -> None:
    """End the process once its command has finished, without the interpreter's teardown.

    With torch imported, Python's teardown (freeing every module's objects, the
    libraries' static destructors) took 0.9 s after the work was done, 2 s with
    torchvision's detectors, on the 2-core CI machine; 0.4 s with scikit-learn.
    By now the outputs are written and closed, non-daemon threads have been joined
    and every atexit hook registered after this one has run, so nothing is lost.
    After a bug's traceback (no status) the teardown runs as usual.
    """
    if _exit_status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it
            pass
    os._exit(_exit_status)


def _main(argv) -> int:
    import logging

    # Readers log their own complaints about broken files; we report each
    # failure once, as one line.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    args = build_parser().parse_args(argv)
    from ..core.errors import UserInputError

    try:
        if getattr(args, "distributed", False):
            return _run_distributed(args)
        args.run(args)
    except UserInputError as e:
        print(f"dlvision: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except MemoryError:
        print("dlvision: error: out of memory; try a smaller image, tile or batch", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `dlvision info m.dlv | head`: the reader left; nothing is wrong with the run.
        # stdout's buffer is dropped, or the flush at exit fails the same way.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except BrokenExecutor:
        # --scheduler processes: a worker killed (by the kernel's out-of-memory killer, say)
        print("dlvision: error: a worker process ended abruptly (killed, or out of memory?); "
              "no partial output was left behind", file=sys.stderr)
        return 1
    except OSError as e:
        from ..core.io import final_name

        where = f": {final_name(e.filename)}" if e.filename else ""
        print(f"dlvision: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        import warnings

        # An interrupt inside zarr's event loop leaves a coroutine never awaited,
        # whose RuntimeWarning would print under our line at exit.
        warnings.simplefilter("ignore")
        how, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"dlvision: {how}; no partial output was left behind", file=sys.stderr)
        return code
    return 0


def _run_distributed(args) -> int:
    """One torchrun rank: join the group, train, leave it; only rank 0 prints."""
    import contextlib
    import os

    from ..dl import distributed

    args.device = distributed.start(args.device)
    rank = distributed.rank()
    # torchrun answers a rank that fails by sending SIGTERM to the others:
    # say so on each of them (Python's default would end them without a word).
    signal.signal(signal.SIGTERM, _stopped_by_torchrun)
    try:
        if distributed.is_main():
            print(f"training on {distributed.world_size()} processes ({args.device})", flush=True)
            args.run(args)
        else:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                args.run(args)
    except Exception as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # leaving anyway: one message, not two
        distributed.stop(together=False)
        # The first a rank sees of another's death is a broken collective, or
        # torchrun's SIGTERM.
        if isinstance(e, StoppedByTorchrun) or (isinstance(e, RuntimeError) and distributed.peer_lost(e)):
            print(f"dlvision: rank {rank} stopped: another rank failed or torchrun was stopped; "
                  "nothing half-written was left behind", file=sys.stderr, flush=True)
            os._exit(1)  # before interpreter teardown, which a late signal would interrupt
        raise
    except BaseException:
        distributed.stop(together=False)
        raise
    distributed.stop()
    # All work is done and written (atomically). Under load, the C++ teardown
    # of torch's process-group threads at interpreter exit sometimes aborted
    # a rank ("terminate called without an active exception"), turning a
    # finished run into a failure: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class StoppedByTorchrun(Exception):
    pass


def _stopped_by_torchrun(signum, frame):
    raise StoppedByTorchrun()


def _one_line(text: str) -> str:
    return " ".join(text.split())

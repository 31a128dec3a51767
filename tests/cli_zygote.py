"""A process that has imported torch once and forks one child per `dlvision` command.

Started by `cli_helpers.dlvision` (one per pytest worker). Every CLI test used to
start a fresh interpreter that imported torch and scikit-learn again: 3-7 s of
each command on the 2-core CI machine, most of the suite's time. Each command
still runs in a process of its own, from the CLI's entry point, with its own
arguments, environment, working folder, stdout, stderr and exit status; only the
interpreter's start-up and the libraries' imports are shared. What start-up
itself does (which modules a command imports, Ctrl-C, torchrun) is tested with
fresh interpreters elsewhere (`fresh=True`, test_startup.py, the Popen tests).

Protocol, one JSON line each way on stdin / stdout: the request
{"argv", "cwd", "env", "stdout", "stderr"} (the last two: files the child writes),
then the answers {"pid": N} once forked and {"returncode": N} once it ended.
"""

import json
import os
import signal
import sys

# Imported here so that the children need not: the heavy libraries the commands use.
import numpy  # noqa: F401
import sklearn.ensemble  # noqa: F401
import tifffile  # noqa: F401
import torch  # noqa: F401
import torchvision.ops  # noqa: F401

import napari_dlvision.cli  # noqa: F401


def _child(request: dict) -> None:
    """Become the command: its folder, environment and files, then the entry point.
    Never returns: the interpreter exits with the command's status, as a fresh one would."""
    import runpy
    import tempfile

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # read TMPDIR again, as a fresh process does
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stdin = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((stdin, 0), (out, 1), (err, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.argv = ["dlvision", *request["argv"]]
    runpy.run_module("napari_dlvision.cli", run_name="__main__", alter_sys=True)
    sys.exit(0)  # __main__ ends with sys.exit(main()); this is reached only if it did not


def main() -> None:
    answers = sys.stdout
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        answers.write(json.dumps({"pid": pid}) + "\n")
        answers.flush()
        _, status = os.waitpid(pid, 0)
        answers.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()

"""The command line as users run it: `dlvision ...`, each command in a process of its own."""

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

_ZYGOTE = Path(__file__).with_name("cli_zygote.py")


def dlvision(*args, cwd=None, timeout=600, fresh=False, **env):
    """`dlvision ARGS` in a child process; `env`: variables added to the
    environment (e.g. CUDA_VISIBLE_DEVICES="" for a machine without a GPU).
    The child is forked from a process that has imported torch already (see
    cli_zygote.py); `fresh=True` starts a new interpreter instead, as a user's
    shell does. The timeout only keeps a hang from stalling the suite."""
    argv = [*map(str, args)]
    full_env = {**os.environ, **env}
    if fresh:
        return subprocess.run([sys.executable, "-m", "napari_dlvision.cli", *argv], capture_output=True,
                              text=True, cwd=cwd, timeout=timeout, env=full_env)
    return _Zygote.run(argv, os.path.abspath(cwd or os.getcwd()), full_env, timeout)


class _Zygote:
    """The forking process of this pytest worker, started at its first command."""

    process = None
    lock = threading.Lock()

    @classmethod
    def run(cls, argv, cwd, env, timeout):
        with cls.lock, tempfile.TemporaryDirectory(prefix="dlvision-cli-") as folder:
            z = cls._started()
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            z.stdin.write(json.dumps({"argv": argv, "cwd": cwd, "env": env, "stdout": out, "stderr": err}) + "\n")
            z.stdin.flush()
            pid = json.loads(z.stdout.readline())["pid"]
            killed = []  # as subprocess.run's timeout: the child is killed
            timer = threading.Timer(timeout, lambda: killed.append(os.kill(pid, 9)))
            timer.start()
            try:
                answer = z.stdout.readline()
            finally:
                timer.cancel()
            if not answer:
                cls.process = None
                raise RuntimeError("the CLI test fork server died; its stderr is the pytest worker's")
            code = json.loads(answer)["returncode"]
            if killed:
                raise subprocess.TimeoutExpired(["dlvision", *argv], timeout)
            return subprocess.CompletedProcess(["dlvision", *argv], code, Path(out).read_text(),
                                               Path(err).read_text())

    @classmethod
    def _started(cls):
        if cls.process is None or cls.process.poll() is not None:
            cls.process = subprocess.Popen([sys.executable, str(_ZYGOTE)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, bufsize=1)
        return cls.process


def one_line_error(r, text=""):
    """A refusal as users should see it: exit 1 and one line, "dlvision ...: error:
    ..." (usage errors name the sub-command), holding `text`; returns that line."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlvision") and ": error: " in lines[0], r.stderr
    assert text in lines[0], lines[0]
    return lines[0]

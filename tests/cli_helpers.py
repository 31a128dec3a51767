"""The command line as users run it: `dlvision ...` in a subprocess."""

import os
import subprocess
import sys


def dlvision(*args, cwd=None, timeout=600, **env):
    """`dlvision ARGS` run by this interpreter; `env`: variables added to the
    environment (e.g. CUDA_VISIBLE_DEVICES="" for a machine without a GPU).
    The timeout only keeps a hang from stalling the suite."""
    return subprocess.run([sys.executable, "-m", "napari_dlvision.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout, env={**os.environ, **env} if env else None)


def one_line_error(r, text=""):
    """A refusal as users should see it: exit 1 and one line, "dlvision ...: error:
    ..." (usage errors name the sub-command), holding `text`; returns that line."""
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlvision") and ": error: " in lines[0], r.stderr
    assert text in lines[0], lines[0]
    return lines[0]

"""Container entrypoint: TorchServe's own launcher, with java exec'd in place of the launcher.

`torchserve --start --foreground` keeps a Python launcher between PID 1 and java.
On SIGTERM the launcher dies at once, tini (PID 1) exits with it, and the
runtime SIGKILLs java and its workers in the middle of their requests. Here the
launcher builds java's command line exactly as usual (vmargs from
config.properties, class path, model store checks), but java replaces it: java
becomes tini's direct child, receives SIGTERM itself, and its exit status (a
crash included) ends the container.

python container/entrypoint.py [extra torchserve flags, e.g. --model-store /models]
"""

import os
import subprocess
import sys
from pathlib import Path

from ts import model_server

# In the image: /app/container/entrypoint.py, /app/config.properties; in the repository: the same layout. The image
# holds no detector/ (only the archive packs it), so this is not detector.paths.ROOT, though it names the same place.
ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.properties"
# Logs to stdout only (kubectl logs), none to files on the container's disk.
LOG_CONFIG = ROOT / "container" / "log4j2.xml"


def torchserve_args(config: Path, *extra: str) -> list[str]:
    """TorchServe's command line, for the image, the benchmarks and the tests alike (the Makefile's is tested
    against it): in the foreground (the caller owns the process), no config snapshots, the given config."""
    return ["torchserve", "--start", "--foreground", "--ncs", "--ts-config", str(config), *extra]


def exec_java(command: list[str], *args, **kwargs) -> None:
    """Stands in for the launcher's one subprocess.Popen call: become java instead of spawning it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], command)


def main(extra: list[str]) -> int:
    """Run the launcher; it only returns if it refused the arguments without exec'ing java."""
    sys.argv = torchserve_args(CONFIG, "--log-config", str(LOG_CONFIG), *extra)
    subprocess.Popen = exec_java
    model_server.start()
    print("TorchServe's launcher returned without starting java", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Each server keeps its runtime files to itself: TMPDIR and java.io.tmpdir (where TorchServe puts worker sockets)."""

import os
import shutil
import subprocess

from bench.torchserve import ROOT

TS_TMP = ROOT / ".torchserve" / "tmp"


def test_make_gives_the_checkout_its_own_java_tmpdir():
    """Worker sockets are /<java.io.tmpdir>/.ts.sock.<port>: two checkouts on one host must not share that folder."""
    recipes = (ROOT / "Makefile").read_text()
    assert recipes.count("$(TS_ENV) exec $(BIN)/torchserve --start") == 1  # serve
    assert recipes.count("$(TS_ENV) $(BIN)/torchserve --start") == 1  # start
    # `stop` has no prerequisites to build: its dry run shows TS_ENV as serve and start get it.
    dry_run = subprocess.run(["make", "-n", "stop"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    (command,) = [line for line in dry_run.stdout.splitlines() if "torchserve --stop" in line]
    assert f"TMPDIR={TS_TMP} " in command
    assert f"JAVA_TOOL_OPTIONS=-Djava.io.tmpdir={TS_TMP} " in command


def test_java_takes_its_tmpdir_from_java_tool_options(tmp_path):
    java = shutil.which("java")
    assert java, "Java 17 is needed to serve"
    env = dict(os.environ, JAVA_TOOL_OPTIONS=f"-Djava.io.tmpdir={tmp_path}")
    shown = subprocess.run([java, "-XshowSettings:properties", "-version"], env=env, capture_output=True, text=True)
    assert f"java.io.tmpdir = {tmp_path}\n" in shown.stderr


def test_a_test_servers_worker_sockets_live_in_its_own_folder(torchserve):
    sockets = sorted(path.name for path in (torchserve.workdir / "tmp").glob(".ts.sock.*"))
    assert sockets, "no worker socket in the server's java.io.tmpdir"

"""The container image's recipe, checked without building it: lint, build context, entrypoint, health probe.

The full build-and-serve check is `make container-smoke` (podman, ~25 GB of disk, minutes); these run in CI.
"""

import json
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from PIL import Image

from bench.torchserve import ROOT
from container import entrypoint, probe

DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent
SMOKE = ROOT / "scripts" / "container-smoke.sh"
APP = "/app"  # the runtime stage's WORKDIR


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of every instruction, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage: what the image runs."""
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def copies(stage: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of the stage's COPY instructions from the build context (not --from)."""
    result = []
    for keyword, args in stage:
        words = shlex.split(args)
        if keyword == "COPY" and not any(word.startswith("--from") for word in words):
            result.append((words[:-1], words[-1]))
    return result


def image_files() -> set[str]:
    """Paths in the image of every repository file the final stage copies in."""
    paths = set()
    for sources, destination in copies(final_stage()):
        for source in sources:
            local = ROOT / source
            files = [p for p in local.rglob("*") if p.is_file()] if local.is_dir() else [local]
            for file in files:
                inside = file.relative_to(local) if local.is_dir() else Path(file.name)
                paths.add(str(Path(destination) / inside) if destination.endswith("/") else destination)
    return paths


def json_form(args: str) -> list[str]:
    """The exec (JSON) form of CMD/ENTRYPOINT; a shell form would fail here."""
    return json.loads(args)


# --- .dockerignore, with Docker's rules: last match wins, "!" re-includes, a pattern also matches parent dirs.


def ignore_rules(path: Path = ROOT / ".dockerignore") -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((negated, re.compile(regex + "$")))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether a repository path is sent to the builder."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return not excluded


# --- lint


def test_hadolint_passes_at_the_strictest_threshold():
    result = subprocess.run(
        [BIN / "hadolint", "--no-color", "--failure-threshold", "style", DOCKERFILE], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([BIN / "hadolint", "--no-color", bad], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


def test_smoke_script_passes_shellcheck():
    result = subprocess.run([BIN / "shellcheck", "--severity=style", SMOKE], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_smoke_script_runs_the_image_within_the_deployments_limits():
    result = subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(SMOKE))}; deployment_limits"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    pod = yaml.safe_load((ROOT / "k8s/base/deployment.yaml").read_text())["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    cpus, memory_bytes = result.stdout.split()
    assert cpus == str(limits["cpu"])
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limits["memory"]).groups()
    assert int(memory_bytes) == int(number) * {"Mi": 2**20, "Gi": 2**30}[unit]


# --- the recipe


def test_multi_stage_build_on_a_base_given_as_build_argument():
    steps = instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=debian:bookworm-slim")
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert stages == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE} AS runtime"]
    # The runtime stage carries no compiler, pip cache or build context beyond what it copies.
    runtime_text = " ".join(args for _, args in final_stage())
    assert "python3.11-venv" not in runtime_text
    assert "--no-cache-dir" in " ".join(args for keyword, args in instructions() if keyword == "RUN")


def test_debian_packages_are_pinned_and_leave_no_apt_cache_behind():
    for keyword, args in instructions():
        if keyword == "RUN" and "apt-get install" in args:
            command = args.split("apt-get install", 1)[1].split("&&")[0]
            packages = [word for word in command.split() if not word.startswith("-")]
            assert packages and all("=" in package for package in packages), command
            # Downloaded .debs (~140 MB here) and package lists stay out of the layer, whatever the base's apt config.
            assert "apt-get clean" in args and "rm -rf /var/lib/apt/lists/*" in args


def test_runs_as_a_non_root_user_with_tini_and_the_exec_form():
    stage = final_stage()
    (user,) = [args for keyword, args in stage if keyword == "USER"]
    uid, gid = user.split(":")
    assert int(uid) >= 10000 and int(gid) >= 10000
    (entry,) = [json_form(args) for keyword, args in stage if keyword == "ENTRYPOINT"]
    assert entry[:2] == ["/usr/bin/tini", "--"]
    assert entry[2:] == ["/opt/venv/bin/python", f"{APP}/container/entrypoint.py"]
    assert f"{APP}/container/entrypoint.py" in image_files()
    assert not [args for keyword, args in stage if keyword == "CMD"], "no CMD: extra arguments go to torchserve"


def test_exposes_exactly_the_ports_torchserve_serves_beyond_loopback():
    served = set()
    for value in re.findall(r"^\w+_address=(\S+)$", (ROOT / "config.properties").read_text(), flags=re.M):
        match = re.fullmatch(r"https?://([\d.]+):(\d+)", value)
        if match and not match.group(1).startswith("127."):
            served.add(match.group(2))
    exposed = {port for keyword, args in final_stage() if keyword == "EXPOSE" for port in args.split()}
    assert exposed == served == {"8080", "8082"}


def test_healthcheck_requires_a_real_prediction():
    (check,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    options, command = check.split(" CMD ", 1)
    command = json_form(command)
    assert command == ["/opt/venv/bin/python", f"{APP}/container/probe.py", "--predict"]
    assert command[1] in image_files()
    assert "--start-period" in options


def test_image_holds_every_file_the_server_config_names():
    """config.properties is read in /app; each relative path it names must be there too."""
    files = image_files()
    assert f"{APP}/config.properties" in files
    for value in re.findall(r"^\w+=(\S+)$", (ROOT / "config.properties").read_text(), flags=re.M):
        if (ROOT / value).is_file():
            assert f"{APP}/{value}" in files, f"config.properties names {value}, which the image lacks"


def test_build_context_holds_what_the_dockerfile_copies_and_nothing_heavy():
    rules = ignore_rules()
    for sources, _ in copies(instructions()):
        for source in sources:
            local = ROOT / source
            assert local.exists(), source
            files = list(local.rglob("*.py")) if local.is_dir() else [local]
            assert files and all(in_context(str(p.relative_to(ROOT)), rules) for p in files), source
    for heavy in [".venv/bin/python", "data/cifar-10/x.bin", "model_store/corruption.mar", "checkpoints/model.pt",
                  ".git/HEAD", "tests/test_container.py", "detector/__pycache__/model.cpython-311.pyc",
                  ".torchserve/logs/ts_log.log", "logs/ts_log.log", "weights/training.json"]:  # fmt: skip
        assert not in_context(heavy, rules), heavy


def test_log4j_config_logs_to_stdout_only():
    appenders = ET.parse(ROOT / "container" / "log4j2.xml").getroot().find("Appenders")
    assert [appender.tag for appender in appenders] == ["Console"] * len(appenders)
    assert {appender.get("target") for appender in appenders} == {"SYSTEM_OUT"}


# --- entrypoint: TorchServe's launcher, exec'ing java


class Execed(Exception):
    """Raised by the fake execvp: exec never returns."""


@pytest.fixture
def exec_calls(monkeypatch, tmp_path) -> list[list[str]]:
    """Run the entrypoint in a scratch directory with os.execvp captured (and subprocess.Popen restored after)."""
    calls: list[list[str]] = []

    def fake_execvp(file: str, argv: list[str]) -> None:
        calls.append(argv)
        raise Execed

    monkeypatch.setattr(subprocess, "Popen", subprocess.Popen)  # main() replaces both; restored after the test
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(entrypoint.os, "execvp", fake_execvp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the launcher looks for a running server
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_store").mkdir()
    return calls


def test_entrypoint_execs_java_with_torchservess_own_command_line(exec_calls):
    with pytest.raises(Execed):
        entrypoint.main([])
    (argv,) = exec_calls
    vmargs = re.search(r"^vmargs=(.*)$", (ROOT / "config.properties").read_text(), flags=re.M).group(1).split()
    assert argv[0] == "java"
    assert all(arg in argv for arg in vmargs)
    assert f"-Dlog4j.configurationFile=file://{ROOT}/container/log4j2.xml" in argv
    main_class = argv.index("org.pytorch.serve.ModelServer")
    assert argv[main_class + 1 :] == [
        "--python",
        sys.executable,
        "-f",
        str(ROOT / "config.properties"),
        "-s",
        "model_store",
        "-ncs",
    ]


def test_entrypoint_passes_extra_flags_to_torchserve(exec_calls, tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(Execed):
        entrypoint.main(["--model-store", str(tmp_path / "models")])
    (argv,) = exec_calls
    assert argv[argv.index("-s") + 1] == str(tmp_path / "models")


def test_entrypoint_exits_non_zero_when_the_launcher_refuses(exec_calls, tmp_path):
    with pytest.raises(SystemExit) as refused:
        entrypoint.main(["--model-store", str(tmp_path / "missing")])
    assert refused.value.code == 1
    assert exec_calls == []


# --- probe


def test_probe_image_is_a_valid_png():
    image = Image.open(BytesIO(probe.tiny_png()))
    image.load()
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (8, 8)


def test_probe_passes_on_a_real_torchserve(torchserve, capsys):
    args = ["--management", torchserve.management, "--inference", torchserve.inference]
    assert probe.main([*args, "--all-workers", "--predict"]) == 0
    assert probe.main(args) == 0
    assert "ready: 2 worker(s), predicted" in capsys.readouterr().out


class FakeTorchServe(BaseHTTPRequestHandler):
    """Answers the two URLs the probe asks with what the test put in `replies`."""

    replies: ClassVar[dict[str, tuple[int, object]]] = {}

    def reply(self) -> None:
        status, body = self.replies.get(self.path, (404, {"code": 404}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.reply()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeTorchServe)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


GOOD_ANSWER = {"label": "clean", "confidence": 0.9, "probs": {"clean": 0.9, "corrupted": 0.1}}


@pytest.mark.parametrize(
    "workers, answer, flags, healthy",
    [
        (["READY", "READY"], (200, GOOD_ANSWER), ["--all-workers", "--predict"], True),
        (["READY", "UNLOADING"], None, [], True),
        (["READY", "UNLOADING"], None, ["--all-workers"], False),
        ([], None, [], False),
        (["UNLOADING"], None, [], False),
        (["READY"], (503, {"code": 503, "message": "no worker"}), ["--predict"], False),
        (["READY"], (200, {"label": "clean", "probs": {"clean": 0.9}}), ["--predict"], False),
        (["READY"], (200, {"label": "clean", "probs": {"clean": 0.9, "corrupted": 0.9}}), ["--predict"], False),
    ],
)
def test_probe_verdicts(fake_server, monkeypatch, workers, answer, flags, healthy):
    replies = {"/models/corruption": (200, [{"modelName": "corruption", "workers": [{"status": s} for s in workers]}])}
    if answer:
        replies["/predictions/corruption"] = answer
    monkeypatch.setattr(FakeTorchServe, "replies", replies)
    code = probe.main(["--management", fake_server, "--inference", fake_server, *flags])
    assert code == (0 if healthy else 1)


def test_probe_fails_when_nothing_listens(fake_server, monkeypatch, capsys):
    monkeypatch.setattr(FakeTorchServe, "replies", {})
    assert probe.main(["--management", fake_server]) == 1  # 404: the model is not registered
    assert probe.main(["--management", "http://127.0.0.1:9", "--timeout", "1"]) == 1
    assert "not ready" in capsys.readouterr().err

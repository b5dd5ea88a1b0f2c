"""The deployment files, checked without a Docker engine (there is none on the dev machine).

The compose files are parsed with PyYAML (merge keys resolved as compose resolves them) and
checked against each other, the nginx config and the Dockerfile: every service that others wait
for as healthy has a health check, named volumes are declared, bind-mounted files exist, the
proxy's upstreams are the replicas on their port, the replicas' database URL names the postgres
service with its user, database and password variable, and the GPU override reserves NVIDIA
devices. The Dockerfile must install with the README's commands (same pins as pyproject), and
its build context (.dockerignore) must hold what that install reads. docker/compose_plan.py,
which turns compose services into `docker run` arguments for docker/smoke.sh, must carry the
file's environment, volumes and health checks. Building and running the stack is
docker/smoke.sh's job (minutes, a Docker engine): not here, see the README.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
GPU = REPO / "docker-compose.gpu.yml"
DOCKERFILE = REPO / "Dockerfile"
NGINX = REPO / "docker" / "nginx.conf"
REPLICAS = ("replica-a", "replica-b")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def gpu() -> dict[str, Any]:
    return load(GPU)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def global_args() -> dict[str, str]:
    """ARGs before the first FROM (usable in FROM lines)."""
    out: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            out[name] = value
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def healthchecked_image_services(compose: dict[str, Any]) -> set[str]:
    """Services built from our Dockerfile: their health check is its HEALTHCHECK."""
    return {name for name, s in compose["services"].items()
            if isinstance(s.get("build"), dict) and s["build"].get("context") == "."}


# ---------------------------------------------------------------- compose


def test_compose_runs_postgres_two_replicas_and_a_proxy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", *REPLICAS, "proxy"}
    assert services["postgres"]["image"].startswith("postgres:")
    for name in REPLICAS:
        s = services[name]
        assert s["build"]["context"] == "." and s["image"].startswith("faceserve:")
        assert s["build"]["args"]["TORCH_VARIANT"] == "${TORCH_VARIANT:-cpu}"
        assert s["environment"]["FACESERVE_HOST"] == "0.0.0.0"
    assert services["replica-a"] == services["replica-b"]  # one definition (the anchor)
    assert services["proxy"]["image"].startswith("nginx:")


def test_everything_waited_for_has_a_health_check(compose: dict[str, Any]) -> None:
    services = compose["services"]
    from_dockerfile = healthchecked_image_services(compose)
    assert from_dockerfile == set(REPLICAS)
    assert any(i[0] == "HEALTHCHECK" for i in stages()[-1])
    waited = 0
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec.get("condition") == "service_healthy":
                waited += 1
                assert "healthcheck" in services[dep] or dep in from_dockerfile, (name, dep)
    assert waited == 4  # each replica on postgres, the proxy on each replica
    assert services["proxy"]["depends_on"] == {r: {"condition": "service_healthy"}
                                               for r in REPLICAS}
    for name in ("postgres", "proxy"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1


def test_volumes_are_declared_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                assert volume["type"] in ("tmpfs", "volume", "bind"), (name, volume)
                continue
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            else:
                used.add(source)
    assert used == declared == {"postgres-data"}
    assert "postgres-data:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]


def test_the_replicas_reach_postgres_with_its_credentials(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]["environment"]
    password_var = re.fullmatch(r"\$\{(\w+):\?.+\}", postgres["POSTGRES_PASSWORD"])
    assert password_var, "the password must come from the env file, and be required"
    for name in REPLICAS:
        url = compose["services"][name]["environment"]["FACESERVE_DATABASE_URL"]
        m = re.fullmatch(r"postgresql://(\w+):\$\{(\w+):\?[^}]+\}@(\w+):5432/(\w+)", url)
        assert m, url
        user, var, host, db = m.groups()
        assert (user, var, host, db) == (postgres["POSTGRES_USER"], password_var.group(1),
                                         "postgres", postgres["POSTGRES_DB"])
        env_files = compose["services"][name]["env_file"]
        assert env_files == [{"path": ".env", "required": False}]
    example = (REPO / "docker" / "example.env").read_text(encoding="utf-8")
    assert re.search(rf"^{password_var.group(1)}=\S+", example, re.M)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_nginx_balances_over_the_replicas_on_their_port(compose: dict[str, Any]) -> None:
    conf = NGINX.read_text(encoding="utf-8")
    assert conf.count("{") == conf.count("}")
    port = compose["services"]["replica-a"]["environment"]["FACESERVE_PORT"]
    upstream = re.search(r"upstream faceserve \{(.*?)\}", conf, re.S)
    assert upstream
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(1), re.M)
    assert sorted(servers) == sorted((r, port) for r in REPLICAS)
    assert "proxy_pass http://faceserve;" in conf
    listen = re.search(r"^\s*listen\s+(\d+);", conf, re.M)
    assert listen
    proxy = compose["services"]["proxy"]
    assert proxy["ports"] == [f"${{FACESERVE_PUBLISH:-127.0.0.1:{listen.group(1)}}}:"
                              f"{listen.group(1)}"]
    assert "/etc/nginx/nginx.conf:ro" in proxy["volumes"][0]
    assert "8080/healthz" in " ".join(proxy["healthcheck"]["test"])


def test_the_gpu_override_reserves_nvidia_devices_for_each_replica(
    compose: dict[str, Any], gpu: dict[str, Any]
) -> None:
    assert set(gpu["services"]) == set(REPLICAS) <= set(compose["services"])
    for name in REPLICAS:
        s = gpu["services"][name]
        [device] = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert device.get("count") or device.get("device_ids")
        variant = s["build"]["args"]["TORCH_VARIANT"]
        assert re.fullmatch(r"cu\d+", variant) and s["image"] == f"faceserve:{variant}"
        assert s["environment"]["FACESERVE_DEVICE"] == "cuda"


# ---------------------------------------------------------------- Dockerfile


def test_the_image_is_multi_stage_slim_non_root_with_weights_and_a_health_check() -> None:
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    # Both stages on one base: a build argument (a local image where Docker Hub is out of
    # reach), slim Python by default.
    base = global_args()["BASE_IMAGE"].replace("${PYTHON_VERSION}",
                                               global_args()["PYTHON_VERSION"])
    assert base == "python:3.11-slim"
    assert all(dict([i])["FROM"].startswith("${BASE_IMAGE} AS ") for i in (build[0], runtime[0]))
    assert any(i == ("ARG", "TORCH_VARIANT=cpu") for i in build)
    [install] = [i[1] for i in build if i[0] == "RUN"]
    assert install.startswith("python3 -m venv /opt/venv ")
    assert "faceserve convert --cache-dir /opt/faceserve/weights" in install
    # convert writes 0600; the runtime user (not root) must read the weights.
    assert install.endswith("&& chmod -R a+rX /opt/faceserve")
    # The venv and the weights, one layer, last (vfs copies the image for every later step).
    assert runtime[-1] == ("COPY", "--from=build /opt /opt")
    env = " ".join(i[1] for i in runtime if i[0] == "ENV")
    assert "FACESERVE_CACHE_DIR=/opt/faceserve/weights" in env
    users = [i[1] for i in runtime if i[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    [health] = [i[1] for i in runtime if i[0] == "HEALTHCHECK"]
    assert "/readyz" in health
    entry = [i[1] for i in runtime if i[0] == "COPY" and "entrypoint" in i[1]]
    assert entry and (REPO / entry[0].split()[0]).is_file()


def test_the_replica_tmpfs_is_the_image_users_own_on_every_start(compose: dict[str, Any]) -> None:
    """Docker gives a tmpfs the mode of the directory it covers (absent on a first start, root's
    755 after a restart: the replica could not write its lock file) and the owner of uid=/gid=.
    The image's mount point and the compose options must name the same user, mode 0700."""
    [runtime_user] = [i[1] for i in stages()[-1] if i[0] == "RUN" and "useradd" in i[1]]
    uid = re.search(r"useradd [^&]*--uid (\d+)", runtime_user)
    gid = re.search(r"groupadd [^&]*--gid (\d+)", runtime_user)
    assert uid and gid, runtime_user
    for name in sorted(healthchecked_image_services(compose)):
        env = compose["services"][name]["environment"]
        [mount] = compose["services"][name]["tmpfs"]
        path, options = mount.split(":", 1)
        assert path == env["FACESERVE_DATA_DIR"]
        opts = dict(o.split("=", 1) for o in options.split(","))
        assert opts == {"uid": uid.group(1), "gid": gid.group(1), "mode": "0700"}, (name, opts)
        assert re.search(rf"install -d -o faceserve -g faceserve -m 0700 [^&]*{re.escape(path)}\b",
                         runtime_user), runtime_user


def _normalise(command: str, args: dict[str, str]) -> str:
    """A pip command with ARGs expanded and the venv location dropped."""
    for _ in range(3):  # ARG defaults may refer to earlier ARGs
        for name, value in args.items():
            command = command.replace(f"${{{name}}}", value).replace(f"${name}", value)
    words = shlex.split(command)
    words[0] = words[0].rsplit("/", 1)[-1]  # .venv/bin/pip, /opt/venv/bin/pip -> pip
    return " ".join(words)


def test_the_dockerfile_installs_with_the_readme_commands() -> None:
    build = stages()[0]
    args = dict(i[1].split("=", 1) for i in build if i[0] == "ARG" and "=" in i[1])
    docker_cmds = [
        _normalise(part.strip(), args)
        for kind, text in build if kind == "RUN"
        for part in text.split("&&") if " install " in part and "pip" in part
    ]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deployment", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block
    readme_cmds = [_normalise(line, {}) for line in block.group(1).splitlines()
                   if "pip install" in line]
    assert docker_cmds == readme_cmds and len(docker_cmds) == 3
    assert "faceserve convert" in block.group(1)
    # The torch pins are pyproject's; `make` installs the same project (editable, with tests).
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for package in ("torch", "torchvision"):
        [pin] = [p for p in pins if re.match(rf"{package}==", p)]
        assert pin in docker_cmds[0].split()
    # The client package first: the server imports its response models from it.
    assert docker_cmds[1:] == ["pip install ./clients/python", "pip install ."]
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"\$\(PY\) -m pip install .*-e clients/python\n", makefile)
    assert re.search(r"\$\(PY\) -m pip install .*-e '\.\[test\]'", makefile)


def test_the_build_context_holds_what_the_install_reads() -> None:
    """.dockerignore lets in only listed paths: each one the Dockerfile or pip needs."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], "clients/python", *packages}
    needed |= {i[1].split()[0] for stage in stages() for i in stage
               if i[0] == "COPY" and not i[1].startswith(("--from", "."))}
    assert needed <= allowed, needed - allowed
    assert all((REPO / path).exists() for path in allowed)
    assert ("COPY", ". /src") in stages()[0]


def plan(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "docker" / "compose_plan.py"), *args],
        capture_output=True, text=True, env={"POSTGRES_PASSWORD": "pw"}, check=True,
    )
    return out.stdout.splitlines()


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


PORTS = ("--port", "replica-a=18001", "--port", "replica-b=18002", "--port", "proxy=18080")


def test_the_smoke_plan_runs_each_replica_as_compose_describes(compose: dict[str, Any]) -> None:
    spec = compose["services"]["replica-a"]
    args = plan("replica-a", *PORTS)
    assert args[-1] == spec["image"].replace("${TORCH_VARIANT:-cpu}", "cpu")
    env = dict(e.split("=", 1) for e in pairs(args, "-e"))
    assert set(env) == set(spec["environment"])
    assert env["FACESERVE_DATABASE_URL"] == "postgresql://faceserve:pw@postgres:5432/faceserve"
    assert env["FACESERVE_PORT"] == "18001"  # host networking: a port per replica
    assert pairs(args, "--tmpfs") == spec["tmpfs"]  # with their uid=, gid=, mode= options
    assert pairs(args, "--restart") == [spec["restart"]]
    assert pairs(args, "--network") == ["host"]
    assert sorted(pairs(args, "--add-host")) == sorted(f"{s}:127.0.0.1"
                                                       for s in compose["services"])
    oneoff = plan("replica-a", "--oneoff", *PORTS)
    assert oneoff[0] == "--rm" and "--restart" not in oneoff
    assert pairs(oneoff, "-e") == pairs(args, "-e")


def test_the_smoke_plan_points_nginx_at_the_replica_ports(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    conf = tmp_path / "nginx.conf"
    args = plan("proxy", "--image", "proxy:local", "--nginx-out", str(conf), *PORTS)
    assert args[-1] == "proxy:local"
    [mount] = pairs(args, "-v")
    assert mount == f"{conf}:/etc/nginx/nginx.conf:ro"
    text, original = conf.read_text(), NGINX.read_text()
    assert re.findall(r"server\s+(\S+) max_fails", text) == ["127.0.0.1:18001", "127.0.0.1:18002"]
    assert "listen 18080;" in text
    assert len(text.splitlines()) == len(original.splitlines())
    check = compose["services"]["proxy"]["healthcheck"]
    assert pairs(args, "--health-cmd") == [
        shlex.join(check["test"][1:]).replace(":8080/", ":18080/")]
    assert pairs(args, "--health-retries") == [str(check["retries"])]


def test_the_smoke_script_is_valid_bash_and_documented() -> None:
    script = REPO / "docker" / "smoke.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "docker/smoke.sh" in (REPO / "README.md").read_text(encoding="utf-8")


def test_the_entrypoint_is_valid_sh() -> None:
    script = REPO / "docker" / "entrypoint.sh"
    assert script.read_text().startswith("#!/bin/sh")
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0

"""Turn a service of docker-compose.yml into `docker run` arguments, for docker/smoke.sh.

Why: the engine's Debian package ships docker-compose 1.29, older than the compose file, and
there is no compose v2 plugin there; the smoke test still wants to run exactly what the compose
file says. Image, environment (with `${VAR}`, `${VAR:-default}` and `${VAR:?message}` taken
from the environment), env files, tmpfs mounts (with their options), volumes, health check and
restart policy come from the file.

Without a bridge network every container shares the host's (`--network host`), so service
names resolve to 127.0.0.1 (`--add-host`) and each service that listens needs its own port:
`--port replica-a=18001` sets that replica's FACESERVE_PORT, and for the proxy the nginx
config is rewritten (upstream `replica-a:8000` becomes `127.0.0.1:18001`, `listen 8080`
becomes its port) into `--nginx-out`, which replaces the bind-mounted file.

    python3 docker/compose_plan.py replica-a --port replica-a=18001   # one argument a line
    python3 docker/compose_plan.py proxy --image faceserve-proxy:bookworm --port proxy=18080 \
        --port replica-a=18001 --port replica-b=18002 --nginx-out /tmp/nginx.conf
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
_VAR = re.compile(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax, the three forms the file uses."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise SystemExit(f"compose_plan: {name} is required: {arg}")
        if op == ":-" and not value:
            return arg
        return value

    return _VAR.sub(one, text)


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"compose_plan: {path} is not a compose file")
    return data


def rewrite_nginx(conf: str, ports: dict[str, int], listen: int) -> str:
    """Upstream servers and the listen port, for services sharing the host's network."""
    for name, port in ports.items():
        conf = re.sub(rf"(\bserver\s+){re.escape(name)}:\d+", rf"\g<1>127.0.0.1:{port}", conf)
    return re.sub(r"(\blisten\s+)\d+;", rf"\g<1>{listen};", conf)


def health_args(check: dict[str, Any], port_from: str, port_to: str) -> list[str]:
    test = check["test"]
    if test[0] == "CMD":
        cmd = shlex.join(test[1:])
    elif test[0] == "CMD-SHELL":
        cmd = test[1]
    else:
        raise SystemExit(f"compose_plan: health check form {test[0]} not handled")
    cmd = cmd.replace(f":{port_from}/", f":{port_to}/")
    out = ["--health-cmd", cmd]
    for key in ("interval", "timeout", "retries", "start_period"):
        if key in check:
            out += [f"--health-{key.replace('_', '-')}", str(check[key])]
    return out


def run_args(compose: dict[str, Any], service: str, ports: dict[str, int], env: dict[str, str],
             nginx_out: Path | None, image: str | None = None, oneoff: bool = False) -> list[str]:
    """`oneoff`: as `docker compose run --rm SERVICE ...` (no restart policy, no health check)."""
    spec = compose["services"][service]
    name = f"{compose.get('name', 'compose')}-{service}" + ("-run" if oneoff else "")
    args = (["--rm"] if oneoff else []) + ["--name", name, "--network", "host"]
    for other in compose["services"]:
        args += ["--add-host", f"{other}:127.0.0.1"]
    if "restart" in spec and not oneoff:
        args += ["--restart", spec["restart"]]
    for item in spec.get("env_file") or []:
        path = REPO / (item["path"] if isinstance(item, dict) else item)
        if path.exists():
            args += ["--env-file", str(path)]
        elif not isinstance(item, dict) or item.get("required", True):
            raise SystemExit(f"compose_plan: env file {path} missing")
    environment = dict(spec.get("environment") or {})
    if service in ports and "FACESERVE_PORT" in environment:
        environment["FACESERVE_PORT"] = str(ports[service])
    for key, value in environment.items():
        args += ["-e", f"{key}={interpolate(str(value), env)}"]
    tmpfs = spec.get("tmpfs") or []
    for mount in [tmpfs] if isinstance(tmpfs, str) else tmpfs:  # PATH[:OPTIONS], as docker's
        args += ["--tmpfs", mount]
    for volume in spec.get("volumes") or []:
        if isinstance(volume, dict) and volume["type"] == "tmpfs":
            args += ["--tmpfs", volume["target"]]
        elif isinstance(volume, dict):
            raise SystemExit(f"compose_plan: volume {volume} not handled")
        else:
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/")):
                host = REPO / source
                if nginx_out is not None and target == "/etc/nginx/nginx.conf":
                    host = nginx_out
                args += ["-v", ":".join([str(host.resolve()), target, *mode])]
            else:  # a named volume
                args += ["-v", f"{compose.get('name', 'compose')}-{volume}"]
    if "healthcheck" in spec and not oneoff:
        published = (spec.get("ports") or ["8080:8080"])[0].rsplit(":", 1)[-1]
        args += health_args(spec["healthcheck"], published, str(ports.get(service, published)))
    args.append(image or interpolate(spec["image"], env))
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("service")
    p.add_argument("--file", type=Path, default=REPO / "docker-compose.yml")
    p.add_argument("--port", action="append", default=[], metavar="SERVICE=PORT",
                   help="the host port a service listens on (host networking)")
    p.add_argument("--nginx-out", type=Path,
                   help="write the rewritten nginx.conf here (for the proxy service)")
    p.add_argument("--image", help="run this image instead of the file's (built locally)")
    p.add_argument("--oneoff", action="store_true",
                   help="arguments for a one-off command, as `docker compose run --rm`")
    args = p.parse_args(argv)
    compose = load(args.file)
    ports = {k: int(v) for k, v in (item.split("=", 1) for item in args.port)}
    if args.nginx_out is not None:
        conf = (REPO / "docker" / "nginx.conf").read_text(encoding="utf-8")
        listen = ports.get(args.service, 8080)
        args.nginx_out.write_text(rewrite_nginx(conf, ports, listen), encoding="utf-8")
    for arg in run_args(compose, args.service, ports, dict(os.environ), args.nginx_out,
                        args.image, args.oneoff):
        if "\n" in arg:
            raise SystemExit(f"compose_plan: newline in argument {arg!r}")
        sys.stdout.write(arg + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

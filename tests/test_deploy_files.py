"""deploy/: the image, the compose stack and the Kubernetes manifests, checked here.

No Docker engine or cluster runs in `make test`: the Dockerfile is linted
(hadolint) and read by Docker's own parser (dockerfile), .dockerignore matched
by docker-py's, the manifests are validated against the Kubernetes schemas that
kubernetes-validate bundles (offline, strict) and read by a YAML parser, nginx's
files checked by `nginx -t` and read by crossplane, `docker compose config` runs
only where the compose plugin exists, and every file is held consistent with
deploy/config.yaml and with the others; a config's SQLite store must lie where
the image's user writes. One test starts `tandem serve` on deploy/config.yaml
(local PostgreSQL and Redis) and drains it as a replica would, another on
deploy/config-single.yaml (SQLite, a key from `tandem keys`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import crossplane
import dockerfile
import grpc
import httpx
import pytest
import yaml
from docker.utils.build import PatternMatcher
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tandem.v1 import admin_pb2, admin_pb2_grpc

from server.config import Config, ConfigError, build_config, load_config, parse_host_port
from tests.balancer import free_ports, nginx_binary, serving_nginx
from tests.eventually import eventually
from tests.servers import TandemProcess, run_cli
from tests.stores import pg_schema_url

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"  # what `kubectl apply -f deploy/k8s/` applies
SECRET_EXAMPLE = DEPLOY / "k8s-examples" / "secret.yaml"  # never applied as it is
BIN = Path(sys.executable).parent
HADOLINT = BIN / "hadolint"
KUBERNETES_VALIDATE = BIN / "kubernetes-validate"
# The oldest Kubernetes the manifests are meant for, and the newest bundled.
K8S_VERSIONS = ("1.33.0", "1.37.0")
MANIFESTS = {
    "configmap.yaml": "ConfigMap",
    "deployment.yaml": "Deployment",
    "service.yaml": "Service",
    "pdb.yaml": "PodDisruptionBudget",
    "hpa.yaml": "HorizontalPodAutoscaler",
}
CONFIG_PATH = "/etc/tandem/config.yaml"
ENTRYPOINT = ["tandem", "serve", "--config", CONFIG_PATH]
# After the drain: the usage flush retries for up to 10 s while the store is down,
# then the spans get up to 5 s (README: Usage, Telemetry).
FLUSH_MARGIN_S = 15
# What the config's ${VAR}s need, with made-up values.
ENV = {
    "TANDEM_JWT_SECRET": "jwt-secret-for-tests",
    "TANDEM_ADMIN_KEY": "admin-key-for-tests",
    "TANDEM_DATABASE_URL": "postgresql://tandem:password@postgres:5432/tandem",
    "TANDEM_REDIS_URL": "redis://redis:6379/0",
}
OPTIONAL_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL")
REDIS_BASE_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifest(name: str) -> dict[str, Any]:
    document: dict[str, Any] = load_yaml(K8S / name)
    return document


def replica_config(environ: dict[str, str] | None = None) -> Config:
    return load_config(DEPLOY / "config.yaml", ENV if environ is None else environ)


def port_of(address: str) -> int:
    return parse_host_port(address)[1]


def run(command: list[str | Path], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


# --- the Dockerfile, read by Docker's own parser (dockerfile: buildkit's, in Go) ---------


@dataclass
class Stage:
    image: str
    name: str | None
    commands: list[Any] = field(default_factory=list)  # dockerfile.Command

    def commands_of(self, keyword: str) -> list[Any]:
        return [command for command in self.commands if command.cmd == keyword]

    def all(self, keyword: str) -> list[str]:
        """The arguments of each `keyword` instruction, its flags first."""
        return [" ".join((*c.flags, *c.value)) for c in self.commands_of(keyword)]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.image}"
        return found[-1]


def dockerfile_stages() -> list[Stage]:
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(DEPLOY / "Dockerfile")):
        if command.cmd == "FROM":
            image, *alias = command.value  # `FROM image AS name`
            stages.append(Stage(image, alias[1] if alias else None))
        else:
            stages[-1].commands.append(command)
    return stages


def in_build_context(path: str) -> bool:
    """Whether `docker build .` at the repository root sends this file: .dockerignore
    read as docker-py's `build` reads it, matched by its port of Docker's matcher."""
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = PatternMatcher([line for line in lines if line and not line.startswith("#")])
    return not ignored.matches(path)


# --- nginx.conf, read by crossplane (NGINX's parser library) -------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def find(self, name: str, *args: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name and list(args) == d.args[: len(args)]]

    def one(self, name: str, *args: str) -> Directive:
        found = self.find(name, *args)
        assert len(found) == 1, f"{self.name} {self.args}: {len(found)} times {name} {args}"
        return found[0]


def nginx_conf(name: str) -> Directive:
    """deploy/<name> as a tree of directives. crossplane's tables of directives predate
    `server ... resolve` and `http2 on`, so it only parses: `nginx -t` checks (below)."""
    parsed = crossplane.parse(
        str(DEPLOY / name), single=True, comments=False, check_ctx=False, check_args=False
    )
    assert parsed["status"] == "ok", parsed["errors"]

    def tree(found: dict[str, Any]) -> Directive:
        block = found.get("block")
        return Directive(
            found["directive"], found["args"], None if block is None else [tree(d) for d in block]
        )

    return Directive("main", [], [tree(d) for d in parsed["config"][0]["parsed"]])


def nginx_version(image: str) -> tuple[int, ...]:
    match = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)(?:-[a-z0-9.]+)?", image)
    assert match, f"nginx image not pinned to a full version: {image}"
    return tuple(int(g) for g in match.groups())


def duration_s(text: str) -> float:
    """A compose duration: `50s`, `1m30s`, `1h`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text != "", f"not a duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


def config_variables() -> dict[str, bool]:
    """Each ${VAR} in deploy/config.yaml's values (not its comments): has it a default?"""
    found: dict[str, bool] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}", value):
                found[name] = bool(default)

    walk(load_yaml(DEPLOY / "config.yaml"))
    return found


# --- hadolint -----------------------------------------------------------------------


def hadolint(dockerfile: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Every rule at every level, no config file or inline pragma can hide one."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    return run(
        [
            HADOLINT,
            "--config",
            config,
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--format",
            "json",
            dockerfile,
        ]
    )


def test_hadolint_passes_the_dockerfile(tmp_path: Path) -> None:
    done = hadolint(DEPLOY / "Dockerfile", tmp_path)
    assert (done.returncode, json.loads(done.stdout)) == (0, []), done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "rule"),
    [
        ("USER 10001:10001", "USER root", "DL3002"),  # the last USER is root
        (
            "pip install --no-cache-dir ./clients/python .",
            "pip install --no-cache-dir ./clients/python uvicorn",
            "DL3013",
        ),
        ("--no-cache-dir ./clients", "./clients", "DL3042"),  # pip's cache left in the image
        (
            'ENTRYPOINT ["tandem", "serve", "--config", "/etc/tandem/config.yaml"]',
            "ENTRYPOINT tandem serve",
            "DL3025",
        ),
        ("FROM python:3.11.13-slim-bookworm AS builder", "FROM python:latest AS builder", "DL3007"),
    ],
)
def test_hadolint_flags_a_broken_dockerfile(tmp_path: Path, old: str, new: str, rule: str) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    done = hadolint(broken, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert rule in {finding["code"] for finding in json.loads(done.stdout)}


# --- kubernetes-validate --------------------------------------------------------------


def kubernetes_validate(files: list[Path], version: str) -> subprocess.CompletedProcess[str]:
    return run([KUBERNETES_VALIDATE, "--strict", "-k", version, *files])


def test_k8s_holds_one_file_per_object() -> None:
    """No Secret: `kubectl apply -f deploy/k8s/` must not apply the example's placeholders."""
    kinds = {path.name: manifest(path.name)["kind"] for path in sorted(K8S.iterdir())}
    assert kinds == MANIFESTS
    for path in K8S.iterdir():
        assert len(list(yaml.safe_load_all(path.read_text()))) == 1, path.name
    assert load_yaml(SECRET_EXAMPLE)["kind"] == "Secret"
    assert [p.name for p in SECRET_EXAMPLE.parent.iterdir()] == [SECRET_EXAMPLE.name]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_passes_every_manifest(version: str) -> None:
    files = [*sorted(K8S.glob("*.yaml")), SECRET_EXAMPLE]
    done = kubernetes_validate(files, version)
    assert done.returncode == 0, done.stdout + done.stderr
    short = version.rpartition(".")[0]
    for path in files:
        assert f"{path.relative_to(ROOT)} passed for resource" in done.stdout
    assert done.stdout.count(f"against version {short}") == len(files)


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        pytest.param(
            "      terminationGracePeriodSeconds:",
            "      terminationGracePeriod: 50\n      terminationGracePeriodSeconds:",
            "'terminationGracePeriod' was unexpected",
            id="unknown-field",
        ),
        pytest.param(
            "  replicas: 3", '  replicas: "3"', "is not of type 'integer'", id="replicas-a-string"
        ),
    ],
)
def test_kubernetes_validate_rejects_a_broken_deployment(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = (K8S / "deployment.yaml").read_text()
    assert text.count(old) == 1
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text.replace(old, new))
    done = kubernetes_validate([broken], K8S_VERSIONS[0])
    assert done.returncode == 1, done.stdout + done.stderr
    assert complaint in done.stdout + done.stderr


# --- deploy/config.yaml -----------------------------------------------------------------


def test_replica_config_loads_with_its_environment() -> None:
    config = replica_config()
    server = config.server
    assert (server.http, server.grpc, server.workers) == ("0.0.0.0:8080", "0.0.0.0:50051", 1)
    assert (server.shutdown_delay_s, server.shutdown_grace_s) == (5, 30)
    assert server.keep_alive_timeout_s == 75
    assert (config.rate_limits.backend, config.rate_limits.url) == (
        "redis",
        ENV["TANDEM_REDIS_URL"],
    )
    assert config.usage.store == ENV["TANDEM_DATABASE_URL"]
    assert config.auth.required is True
    assert config.auth.jwt is not None
    assert config.auth.jwt.secret == ENV["TANDEM_JWT_SECRET"]
    assert config.auth.admin_keys == (ENV["TANDEM_ADMIN_KEY"],)
    assert {p.name: p.kind for p in config.providers} == {"mock": "mock", "openai": "openai"}
    assert config.provider("openai").api_key == ""  # OPENAI_API_KEY may stay unset
    assert config.provider("openai").url == "https://api.openai.com/v1"
    assert {m.name: m.provider for m in config.models} == {"echo": "mock", "gpt-4o-mini": "openai"}
    assert set(config.tiers) == {"free", "standard"}
    assert config.tiers["free"].default_model == "echo"
    assert config.tiers["standard"].default_model == "gpt-4o-mini"


def test_replica_config_takes_the_optional_variables() -> None:
    extra = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://vllm:8000/v1"}
    openai = replica_config({**ENV, **extra}).provider("openai")
    assert (openai.api_key, openai.url) == ("sk-test", "http://vllm:8000/v1")


@pytest.mark.parametrize("name", sorted(ENV))
def test_replica_config_refuses_to_start_without_a_secret(name: str) -> None:
    environ = {k: v for k, v in ENV.items() if k != name}
    with pytest.raises(ConfigError, match=f"environment variable {name} is not set"):
        replica_config(environ)


def test_config_variables_are_the_documented_ones() -> None:
    variables = config_variables()
    assert {name for name, default in variables.items() if not default} == set(ENV)
    assert {name for name, default in variables.items() if default} == set(OPTIONAL_ENV)


def test_configmap_holds_config_yaml_verbatim() -> None:
    configmap = manifest("configmap.yaml")
    assert configmap["data"] == {"config.yaml": (DEPLOY / "config.yaml").read_text()}


# --- a SQLite store, where the image can write ---------------------------------------------

SINGLE = DEPLOY / "config-single.yaml"
SINGLE_STORE = "sqlite:////var/lib/tandem/tandem.db"


def image_workdir() -> Path:
    _, final = dockerfile_stages()
    return Path(final.last("WORKDIR"))


def sqlite_store_problem(text: str) -> str | None:
    """Why a config mounted at CONFIG_PATH would put its SQLite store where the image's
    user cannot write, or None. Read as written (the default if absent), before
    `load_config` resolves a relative path against the config's folder."""
    store = build_config(yaml.safe_load(text) or {}, ENV).usage.store
    if not store.startswith("sqlite:///"):
        return None
    path = Path(store.removeprefix("sqlite:///"))
    if not path.is_absolute():
        return f"{store}: relative, so in {Path(CONFIG_PATH).parent} (read-only), by the config"
    if not path.is_relative_to(image_workdir()):
        return f"{store}: outside {image_workdir()}, the one folder the image's user writes"
    return None


def shipped_configs() -> dict[str, str]:
    """Every config under deploy/ a container may be given, the ConfigMap's included."""
    configs = {path.name: path.read_text() for path in sorted(DEPLOY.glob("config*.yaml"))}
    configs["k8s/configmap.yaml"] = manifest("configmap.yaml")["data"]["config.yaml"]
    return configs


def test_every_shipped_config_keeps_a_sqlite_store_where_the_image_writes() -> None:
    configs = shipped_configs()
    assert {"config.yaml", SINGLE.name} <= set(configs)
    for name, text in configs.items():
        assert sqlite_store_problem(text) is None, name
    assert build_config(yaml.safe_load(SINGLE.read_text()), ENV).usage.store == SINGLE_STORE
    assert image_workdir() == Path("/var/lib/tandem")
    run_comment = (DEPLOY / "Dockerfile").read_text().partition("\nFROM ")[0]
    for documentation in (run_comment, (DEPLOY / "README.md").read_text()):
        assert SINGLE.name in documentation
        assert SINGLE_STORE in documentation


@pytest.mark.parametrize(
    "text",
    [
        'usage: {store: "sqlite:///tandem.db"}',  # next to the config: /etc/tandem
        "server: {workers: 1}",  # the default store is that same relative path
        'usage: {store: "sqlite:////etc/tandem/tandem.db"}',
        'usage: {store: "sqlite:////tmp/tandem.db"}',  # writable, but an emptyDir of 64 Mi
    ],
)
def test_a_store_the_image_cannot_keep_is_caught(text: str) -> None:
    assert sqlite_store_problem(text) is not None


def test_single_container_config_serves_keys_from_its_store(
    tandem: Callable[..., TandemProcess], tmp_path: Path
) -> None:
    """`config-single.yaml` as shipped but for the store's folder: `tandem keys` and the
    gateway open the same file there, and a key it made is accepted."""
    data = tmp_path / "data"
    data.mkdir()
    text = SINGLE.read_text()
    assert text.count(SINGLE_STORE) == 1
    config = tmp_path / "config.yaml"
    config.write_text(text.replace(SINGLE_STORE, f"sqlite:///{data}/tandem.db"))
    admin = {"TANDEM_ADMIN_KEY": ENV["TANDEM_ADMIN_KEY"]}
    made = run_cli(
        "keys", "create", "--user", "alice", "--json", "--config", config, cwd=ROOT, env=admin
    )
    assert made.returncode == 0, made.stderr
    assert (data / "tandem.db").exists()
    server = tandem(config.read_text(), env={"TANDEM_ADMIN_KEY": ENV["TANDEM_ADMIN_KEY"]})
    chat = {"model": "echo", "messages": [{"role": "user", "content": "one container"}]}
    key = json.loads(made.stdout)["key"]
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        assert client.post("/v1/chat/completions", json=chat).status_code == 401
        answer = client.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"}
        )
        assert answer.json()["choices"][0]["message"]["content"] == "one container"
    assert f"store: SQLite {data / 'tandem.db'}" in server.stderr()


# --- the drain fits the grace periods -----------------------------------------------------


def drain_budget_s() -> float:
    server = replica_config().server
    return server.shutdown_delay_s + server.shutdown_grace_s + FLUSH_MARGIN_S


def test_termination_grace_covers_the_drain() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= drain_budget_s()
    assert "lifecycle" not in pod["containers"][0]  # no preStop: shutdown_delay_s does it


def test_compose_stop_grace_covers_the_drain() -> None:
    tandem = load_yaml(DEPLOY / "compose.yaml")["services"]["tandem"]
    assert duration_s(tandem["stop_grace_period"]) >= drain_budget_s()
    assert tandem.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert tandem.get("init") is not True  # tandem itself is PID 1


# --- the Dockerfile ------------------------------------------------------------------------


def test_dockerfile_builds_a_venv_and_runs_tandem_as_non_root() -> None:
    builder, final = dockerfile_stages()
    assert builder.name == "builder"
    assert builder.image == final.image  # the venv's python links into the base image
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", final.image)
    # the client package by path (PyPI's tandem-client is another project's), the server on it
    assert "pip install --no-cache-dir ./clients/python ." in builder.all("RUN")

    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric, so runAsNonRoot can check it"
    assert int(uid) != 0, f"USER {user}: not root"
    assert gid == "" or int(gid) != 0
    keywords = [command.cmd for command in final.commands]
    assert keywords.index("USER") > max(
        n for n, keyword in enumerate(keywords) if keyword in ("RUN", "COPY")
    ), "USER comes after everything that needs root"
    assert any(f"--uid {uid}" in run for run in final.all("RUN")), "the user is created"
    workdir = final.last("WORKDIR")
    assert any(f"--home-dir {workdir}" in r and "--create-home" in r for r in final.all("RUN"))

    (entrypoint,) = final.commands_of("ENTRYPOINT")
    assert entrypoint.json, "exec form: tandem is PID 1"
    assert list(entrypoint.value) == ENTRYPOINT
    assert not final.all("CMD")
    assert final.last("STOPSIGNAL") == "SIGTERM"
    assert final.all("COPY") == ["--from=builder /opt/venv /opt/venv"]
    assert "/opt/venv/bin" in final.last("ENV")
    final_runs = " ".join(final.all("RUN"))
    for tool in ("apt-get", "apk", "gcc", "build-essential", "pip "):
        assert tool not in final_runs, f"{tool} in the final stage"


def source_files(path: Path) -> list[str]:
    """The files at or under `path`, relative to the root, less what Python leaves
    beside its sources (bytecode, build metadata) and npm's installs
    (clients/typescript/node_modules): a git checkout and a plain copy of the tree alike."""
    found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    left = ("__pycache__", "node_modules")
    return [
        f.relative_to(ROOT).as_posix()
        for f in found
        if not any(part in left or part.endswith(".egg-info") for part in f.parts)
    ]


def test_dockerfile_copies_what_the_package_is_built_from() -> None:
    builder, _ = dockerfile_stages()
    sources = [s for copy in builder.commands_of("COPY") for s in copy.value[:-1]]
    assert sources == ["pyproject.toml", "README.md", "server/", "http_bridge/", "clients/python/"]
    for source in sources:
        assert (ROOT / source).exists(), source
        files = source_files(ROOT / source)
        assert files, f"no source under {source}"
        left_out = [f for f in files if not in_build_context(f)]
        assert not left_out, f".dockerignore leaves out {left_out[:5]}"

    # every package setuptools installs, the server's and the client's, lives under a
    # copied directory
    for project in (Path("."), Path("clients/python")):
        setuptools = tomllib.loads((ROOT / project / "pyproject.toml").read_text())["tool"][
            "setuptools"
        ]
        package_dirs = setuptools.get("package-dir", {})
        for package in setuptools["packages"]:
            top, _, rest = package.partition(".")
            directory = Path(project, package_dirs.get(top, top), *rest.split(".") if rest else ())
            assert any(f"{directory.as_posix()}/".startswith(s) for s in sources), package


def test_dockerignore_keeps_the_context_small() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "tandem.db", "tests/conftest.py", "protos/x"):
        assert not in_build_context(path), path
    for path in ("server/__pycache__/cli.cpython-311.pyc", "tandem.egg-info/PKG-INFO"):
        assert not in_build_context(path), path
    assert in_build_context("clients/python/tandem/v1/chat_pb2.py")
    assert in_build_context("clients/python/pyproject.toml")
    assert not in_build_context("clients/typescript/package.json")  # not the image's
    assert not in_build_context("clients/typescript/node_modules/.bin/buf")
    assert in_build_context("deploy/Dockerfile") is False  # -f names it; the context needs none


# --- ports, probes, names ---------------------------------------------------------------


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest("deployment.yaml")["spec"]["template"]["spec"][
        "containers"
    ]
    assert len(containers) == 1
    return containers[0]


def container_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    ports: dict[str, int] = {p["name"]: p["containerPort"] for p in container()["ports"]}
    return ports[port]  # a named port: the container's


def test_deployment_probes_and_ports_match_the_config() -> None:
    server = replica_config().server
    http, grpc_port = port_of(server.http), port_of(server.grpc)
    spec = container()
    assert {p["name"]: p["containerPort"] for p in spec["ports"]} == {
        "http": http,
        "grpc": grpc_port,
    }
    assert all(p.get("protocol", "TCP") == "TCP" for p in spec["ports"])
    readiness = spec["readinessProbe"]["httpGet"]
    assert (readiness["path"], container_port(readiness["port"])) == ("/readyz", http)
    liveness = spec["livenessProbe"]["httpGet"]
    assert (liveness["path"], container_port(liveness["port"])) == ("/healthz", http)
    startup = spec["startupProbe"]
    assert startup["grpc"]["port"] == grpc_port
    assert startup["grpc"].get("service", "") == ""  # the overall status
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_pods_are_scraped_by_prometheus_on_the_metrics_route() -> None:
    template = manifest("deployment.yaml")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port_of(replica_config().server.http)),
        "prometheus.io/path": "/metrics",
    }
    assert "http" in {p["name"] for p in container()["ports"]}


def test_service_ports_match_the_pods() -> None:
    service = manifest("service.yaml")["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    ports = {p["name"]: p for p in service["ports"]}
    assert set(ports) == {"http", "grpc"}
    server = replica_config().server
    assert ports["http"]["port"] == container_port(ports["http"]["targetPort"])
    assert ports["http"]["port"] == port_of(server.http)
    assert ports["grpc"]["port"] == container_port(ports["grpc"]["targetPort"])
    assert ports["grpc"]["port"] == port_of(server.grpc)
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


def test_dockerfile_exposes_the_config_ports() -> None:
    _, final = dockerfile_stages()
    server = replica_config().server
    exposed = {int(p) for args in final.all("EXPOSE") for p in args.split()}
    assert exposed == {port_of(server.http), port_of(server.grpc)}


def test_deployment_runs_the_image_hardened() -> None:
    deployment = manifest("deployment.yaml")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"] == {"matchLabels": labels}

    _, final = dockerfile_stages()
    uid, _, gid = final.last("USER").partition(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"].get("runAsGroup", int(gid or uid)) == int(gid or uid)
    spec_container = container()
    security = spec_container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not {"command", "args"} & set(spec_container)  # the image's ENTRYPOINT as it is
    for kind in ("requests", "limits"):
        assert set(spec_container["resources"][kind]) == {"cpu", "memory"}

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in spec_container["volumeMounts"]}
    config_mount = mounts[str(Path(CONFIG_PATH).parent)]
    assert config_mount.get("readOnly") is True
    config_volume = volumes[config_mount["name"]]["configMap"]
    assert config_volume["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert config_volume.get("items") is None  # the key config.yaml is the file's name
    writable = [volumes[m["name"]] for m in mounts.values() if not m.get("readOnly")]
    assert writable, "an emptyDir for the writable paths"
    assert all("emptyDir" in v for v in writable)


def test_deployment_environment_is_the_secret_and_the_secret_is_the_config_variables() -> None:
    secret = load_yaml(SECRET_EXAMPLE)
    env_from = container()["envFrom"]
    assert env_from == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert set(secret["stringData"]) == set(config_variables()) - {"OPENAI_BASE_URL"}
    assert all(isinstance(v, str) for v in secret["stringData"].values())
    replica_config(dict(secret["stringData"]))  # the placeholders load, as a template should


def test_pdb_and_hpa_select_the_deployment() -> None:
    deployment = manifest("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = manifest("service.yaml")["spec"]
    assert service["selector"] == labels
    pdb = manifest("pdb.yaml")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == {"matchLabels": labels}
    budget = pdb["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 2
    assert not ("maxUnavailable" in budget and "minAvailable" in budget)
    hpa = manifest("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in container()["resources"]["requests"]  # what Utilization is a share of


# --- compose ------------------------------------------------------------------------------


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (KeyError naming VAR)."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if operator == ":?":
            raise KeyError(f"{name}: {argument}")
        if operator == ":-":
            return argument
        if name not in environ:
            raise KeyError(f"{name} is not set (compose would warn and use '')")
        return ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", substitute, value)


def docker_compose_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    done = subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


def test_compose_file_is_a_valid_replica_stack() -> None:
    compose = load_yaml(DEPLOY / "compose.yaml")
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "tandem", "nginx"}
    for name in ("redis", "postgres", "nginx"):
        image = services[name]["image"]
        assert re.fullmatch(r"[a-z]+:\d+(\.\d+)+(-[a-z0-9.]+)?", image), f"{image}: pin a version"
        assert "healthcheck" in services[name] or name == "nginx"

    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "pg_isready" in postgres["healthcheck"]["test"]

    tandem = services["tandem"]
    assert tandem["deploy"]["replicas"] == 3
    assert not {"ports", "container_name"} & set(tandem)  # three replicas, no fixed names
    assert (DEPLOY / tandem["build"]["context"]).resolve() == ROOT
    assert (ROOT / tandem["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert f"./config.yaml:{CONFIG_PATH}:ro" in tandem["volumes"]
    environment = tandem["environment"]
    assert set(environment) == set(config_variables()) - {"OPENAI_BASE_URL"}
    secrets = {
        "POSTGRES_PASSWORD": "compose-password",
        "TANDEM_JWT_SECRET": "compose-jwt",
        "TANDEM_ADMIN_KEY": "compose-admin",
    }
    for name in secrets:  # each secret is required: compose refuses to start without it
        with pytest.raises(KeyError, match=name):
            for value in environment.values():
                interpolate(value, {**secrets, name: ""})
    replica = {k: interpolate(v, secrets) for k, v in environment.items()}
    # a service's name is its host name on the compose network
    assert urlsplit(replica["TANDEM_DATABASE_URL"]).hostname == "postgres"
    assert urlsplit(replica["TANDEM_DATABASE_URL"]).password == secrets["POSTGRES_PASSWORD"]
    assert urlsplit(replica["TANDEM_REDIS_URL"]).hostname == "redis"
    assert replica["OPENAI_API_KEY"] == ""  # optional
    config = replica_config(replica)  # what the replicas get loads
    assert config.auth.admin_keys == (secrets["TANDEM_ADMIN_KEY"],)
    assert tandem["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    check = tandem["healthcheck"]["test"]
    assert check[:3] == ["CMD", "python", "-c"]
    http_port = port_of(replica_config().server.http)
    assert f"urlopen('http://127.0.0.1:{http_port}/readyz'" in check[3]
    assert not {"curl", "wget"} & set(" ".join(check).split())  # the slim image has neither

    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"] == {"tandem": {"condition": "service_healthy"}}
    published = {p.rpartition(":")[2] for p in nginx["ports"]}
    assert published == {str(http_port), str(port_of(replica_config().server.grpc))}

    if docker_compose_available():  # not on this project's machines: no compose plugin
        environ = {k: v for k, v in os.environ.items() if k not in secrets}
        command = ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "-q"]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**environ, **secrets},
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        refused = subprocess.run(
            command, capture_output=True, text=True, env=environ, timeout=60, check=False
        )
        assert refused.returncode != 0
        assert "POSTGRES_PASSWORD" in refused.stderr


# --- nginx --------------------------------------------------------------------------------


def test_nginx_balances_both_doors_over_the_replicas() -> None:
    conf = nginx_conf("nginx.conf")
    http = conf.one("http")
    server = replica_config().server
    http_port, grpc_port = port_of(server.http), port_of(server.grpc)
    image = load_yaml(DEPLOY / "compose.yaml")["services"]["nginx"]["image"]

    assert http.one("resolver").args[0] == "127.0.0.11"  # Docker's DNS
    for name, port in (("tandem_http", http_port), ("tandem_grpc", grpc_port)):
        upstream = http.one("upstream", name)
        assert upstream.one("server").args == [f"tandem:{port}", "resolve"]
        assert upstream.find("zone"), "`resolve` needs a shared-memory zone"
        assert int(upstream.one("keepalive").args[0]) > 0
        idle = duration_s(upstream.one("keepalive_timeout").args[0])
        assert idle < server.keep_alive_timeout_s, "nginx closes idle connections first"
        assert idle < server.shutdown_delay_s, "no idle connection lives into a drain"
    assert nginx_version(image) >= (1, 27, 3), "`server ... resolve` in open-source nginx"

    def server_on(port: int) -> Directive:
        found = [s for s in http.find("server") if s.find("listen", str(port))]
        assert len(found) == 1, port
        return found[0]

    rest = server_on(http_port)  # what every proxied location inherits
    published = [loc for loc in rest.find("location") if loc.find("proxy_pass")]
    assert {tuple(loc.args) for loc in published} == {
        ("/v1/",),
        ("/native/v1/",),
        ("/api/",),
        ("=", "/"),
        ("=", "/healthz"),
        ("=", "/readyz"),
    }
    assert all(loc.one("proxy_pass").args == ["http://tandem_http"] for loc in published)
    assert all(len(loc.block or []) == 1 for loc in published), "settings on the server"
    assert rest.one("location", "/").one("return").args[0] == "404"
    assert rest.one("proxy_http_version").args == ["1.1"]
    assert rest.one("proxy_set_header", "Connection").args == ["Connection", ""]
    assert rest.one("proxy_buffering").args == ["off"]
    assert rest.one("proxy_next_upstream").args == ["error", "timeout"]  # no non_idempotent

    grpc_server = server_on(grpc_port)
    listen = grpc_server.one("listen", str(grpc_port))
    assert "http2" in listen.args or grpc_server.one("http2").args == ["on"]
    location = grpc_server.one("location", "/")
    assert location.one("grpc_pass").args == ["grpc://tandem_grpc"]
    assert "non_idempotent" not in location.one("grpc_next_upstream").args
    admin = grpc_server.one("location", "/tandem.v1.AdminService/")  # never published
    assert admin.one("return").args == ["204"]
    assert not admin.find("grpc_pass")

    body_limit = http.one("client_max_body_size").args[0]
    assert int(body_limit.removesuffix("m")) * 2**20 > server.max_body_bytes


# nginx.conf needs nginx >= 1.27.3; nginx-1.22.conf is the same for older ones (Debian 12's):
# the oldest nginx each runs on.
NGINX_CONFS = {"nginx.conf": (1, 27, 3), "nginx-1.22.conf": (1, 15, 3)}
REPLICAS_1_22 = ("10.0.0.11", "10.0.0.12", "10.0.0.13")  # nginx-1.22.conf's examples


def installed_nginx_version() -> tuple[int, ...]:
    done = run([nginx_binary(), "-v"])
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", done.stderr)
    assert match, done.stderr
    return tuple(int(g) for g in match.groups())


def without(directives: list[Directive] | None, name: str) -> list[Directive]:
    return [d for d in directives or [] if d.name != name]


def test_nginx_1_22_conf_is_nginx_conf_less_what_nginx_1_22_lacks() -> None:
    """The same balancer: only `resolve` (replicas listed by address instead, no
    resolver, no shared zone) and the `http2` directive (`listen ... http2`) differ."""
    newer = nginx_conf("nginx.conf")
    older = nginx_conf("nginx-1.22.conf")
    server = replica_config().server
    http = newer.one("http")
    http.block = without(http.block, "resolver")
    for name, port in (
        ("tandem_http", port_of(server.http)),
        ("tandem_grpc", port_of(server.grpc)),
    ):
        upstream = http.one("upstream", name)
        assert upstream.one("server").args == [f"tandem:{port}", "resolve"]
        listed = [Directive("server", [f"{address}:{port}"]) for address in REPLICAS_1_22]
        upstream.block = listed + without(without(upstream.block, "zone"), "server")
    grpc_server = next(s for s in http.find("server") if s.find("http2"))
    grpc_server.block = without(grpc_server.block, "http2")
    grpc_server.one("listen").args.append("http2")
    assert older == newer


@pytest.mark.parametrize("name", sorted(NGINX_CONFS))
def test_nginx_checks_the_shipped_conf(name: str, tmp_path: Path) -> None:
    """`nginx -t` on the file as shipped (its access log moved into a temporary prefix);
    skipped where the installed nginx is older than the file needs, once it is seen
    refusing it as the file's header says."""
    conf = tmp_path / name
    text = (DEPLOY / name).read_text()
    conf.write_text(text.replace("/var/log/nginx/access.log", str(tmp_path / "access.log")))
    command: list[str | Path] = [nginx_binary(), "-t", "-p", tmp_path, "-e", tmp_path / "error.log"]
    command += ["-c", conf]
    done = run(command)
    installed, needed = installed_nginx_version(), NGINX_CONFS[name]
    if installed < needed:
        assert done.returncode == 1, done.stderr
        assert 'invalid parameter "resolve"' in done.stderr
        assert ">= 1.27.3" in text.partition("\nworker_processes")[0]  # the header says so
        pytest.skip(
            f"deploy/{name} needs nginx >= {'.'.join(map(str, needed))}; the installed "
            f"{'.'.join(map(str, installed))} refuses it (checked by structure, and served "
            "rewritten below)"
        )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


# The shipped files, run by a real nginx (Debian's 1.22 here, the image's 1.28 in
# production): only the addresses, the paths and, in nginx.conf, what 1.22 lacks are
# rewritten.
PUBLISHED = ("/v1/models", "/native/v1/models", "/api/tags", "/", "/healthz", "/readyz")
UNPUBLISHED = (
    "/metrics",
    "/admin/v1/keys",
    "/admin/v1/spend",
    "/docs",
    "/docs/assets/x.js",
    "/openapi.json",
    "/x",
)


def local_nginx_conf(
    name: str, directory: Path, ports: tuple[int, int], upstreams: tuple[str, str]
) -> str:
    text = (DEPLOY / name).read_text()
    temp_paths = "".join(
        f"    {kind}_temp_path {kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    if name == "nginx.conf":
        rewrites = [
            ("server tandem:8080 resolve;", f"server {upstreams[0]};"),
            ("server tandem:50051 resolve;", f"server {upstreams[1]};"),
            ("listen 50051;", f"listen 127.0.0.1:{ports[1]} http2;"),
            ("http2 on;", ""),  # nginx < 1.25.1: `listen ... http2` only
        ]
    else:
        rewrites = [
            ("".join(f"server {a}:{port};\n        " for a in REPLICAS_1_22), f"server {upstream};")
            for port, upstream in zip((8080, 50051), upstreams, strict=True)
        ]
        rewrites.append(("listen 50051 http2;", f"listen 127.0.0.1:{ports[1]} http2;"))
    for old, new in (
        *rewrites,
        ("listen 8080;", f"listen 127.0.0.1:{ports[0]};"),
        ("access_log /var/log/nginx/access.log", "access_log access.log"),
        ("\nhttp {\n", "\nhttp {\n" + temp_paths),
    ):
        assert text.count(old) == 1, f"deploy/{name}: {old!r} is not there once"
        text = text.replace(old, new)
    return f"daemon off;\npid {directory / 'nginx.pid'};\n{text}"


def raw_get(port: int, target: str) -> tuple[int, str]:
    """GET `target` exactly as written (no client normalises it): status and head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    return int(head.split()[1]), head


def admin_rpc_code(target: str) -> grpc.StatusCode:
    """What `AdminService.ListKeys` (anonymous) gets at `target`."""
    with grpc.insecure_channel(target) as channel:
        try:
            admin_pb2_grpc.AdminServiceStub(channel).ListKeys(
                admin_pb2.ListKeysRequest(), timeout=10
            )
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(NGINX_CONFS))
def test_nginx_publishes_the_doors_and_probes_only(
    tandem: Callable[..., TandemProcess], tmp_path: Path, name: str
) -> None:
    """`/metrics` (scraped from the pods) and the admin routes (reached from inside)
    never pass the balancer; an answer carries `server-timing` if the gateway wrote it."""
    server = tandem("usage: {store: none}\n")
    directory = tmp_path / "nginx"
    directory.mkdir()
    directory.chmod(0o755)  # nginx's workers (not root) write the temp paths
    ports = (http_port, grpc_port) = tuple(free_ports(2))
    conf = local_nginx_conf(name, directory, (http_port, grpc_port), (server.http, server.grpc))
    (directory / "nginx.conf").write_text(conf)
    with (
        serving_nginx(directory, ports),
        httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client,
    ):
        for path in PUBLISHED:
            answer = client.get(path)
            assert "server-timing" in answer.headers, (path, answer.status_code, answer.text)
        assert client.get("/v1/models").status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        for path in UNPUBLISHED:
            answer = client.get(path)
            assert answer.status_code == 404, (path, answer.status_code, answer.text)
            assert "server-timing" not in answer.headers, path
            assert answer.json()["error"]["type"] == "not_found_error"  # the contract's body
        for target in ("/v1/../metrics", "/v1/%2e%2e/metrics", "//metrics", "/metrics?x=1"):
            status, head = raw_get(http_port, target)
            assert (status, "server-timing" in head) == (404, False), (target, head)
        # gRPC: the doors pass, the admin service does not (the replica itself has it)
        assert admin_rpc_code(server.grpc) == grpc.StatusCode.PERMISSION_DENIED
        assert admin_rpc_code(f"127.0.0.1:{grpc_port}") == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's lists no methods
            health = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        # the gateway sees the Host with its port: a page on http://localhost (port 80) is
        # not the same origin as the balancer's localhost:<port>, so CORS refuses it
        host = {"host": f"localhost:{http_port}"}
        same = client.get("/v1/models", headers={**host, "origin": f"http://localhost:{http_port}"})
        assert same.status_code == 200, same.text
        other = client.get("/v1/models", headers={**host, "origin": "http://localhost"})
        assert other.status_code == 403, other.text


# --- the replica config, served and drained ---------------------------------------------


@pytest.fixture
def replica_env() -> Iterator[dict[str, str]]:
    """The Secret's variables for a local run: a fresh PostgreSQL schema, local Redis."""
    redis_url = urlunsplit(urlsplit(REDIS_BASE_URL)._replace(path="/8"))
    with pg_schema_url() as store:
        yield {**ENV, "TANDEM_DATABASE_URL": store, "TANDEM_REDIS_URL": redis_url}


def test_replica_config_serves_and_drains_within_the_grace_period(
    tandem: Callable[..., TandemProcess], replica_env: dict[str, str]
) -> None:
    server = tandem((DEPLOY / "config.yaml").read_text(), env=replica_env)
    config = replica_config(replica_env).server
    admin = {"authorization": f"Bearer {replica_env['TANDEM_ADMIN_KEY']}"}
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hello replica"}]}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "degraded": []})
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/chat/completions", json=chat).status_code == 401  # auth.required
        answer = client.post("/v1/chat/completions", json=chat, headers=admin)
        assert answer.json()["choices"][0]["message"]["content"] == "hello replica"
        with grpc.insecure_channel(server.grpc) as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING

        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # what the kubelet and Docker send
        deadline = started + config.shutdown_delay_s

        def not_ready() -> httpx.Response | None:
            answer = client.get("/readyz")
            return None if answer.status_code == 200 else answer

        draining = eventually(not_ready, deadline - time.monotonic(), what="not ready")
        assert draining.json() == {"status": "not ready", "failing": ["draining"]}
        # still serving through shutdown_delay_s, while balancers take the pod out
        time.sleep(max(0.0, deadline - 1.0 - time.monotonic()))
        served = client.post("/v1/chat/completions", json=chat, headers=admin)
        assert served.status_code == 200
        assert served.headers["connection"] == "close"  # no kept-alive reuse by a balancer
        assert server.proc.poll() is None

    grace = manifest("deployment.yaml")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert server.proc.wait(timeout=grace) == 0, server.stderr()
    assert time.monotonic() - started >= config.shutdown_delay_s

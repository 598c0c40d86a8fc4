#!/usr/bin/env python3
"""Checks the deployment files under deploy/ without Docker, Kubernetes or systemd running.

Run from the repository root (CI does, in .ci/run step "deploy files"):

    python3 deploy/check-deploy-files.py --binary target/debug/smtp-oauth-relay

What it checks (each failure is printed; exit 1 if there was any):

- YAML syntax of deploy/compose.yaml and deploy/kubernetes/*.yaml (yaml.safe_load_all).
- deploy/Dockerfile against the build context (the repo root filtered by .dockerignore):
  every COPY source is sent; the crate's lib, bin and build-script sources are sent;
  cargo accepts the manifest with only what each build step sees (Cargo.toml, Cargo.lock
  and a dummy src/, then the whole context); Cargo.lock is up to date (the image builds with --locked); EXPOSE covers the ports the
  example configs listen on.
- Every file a deploy file refers to exists: compose build context, Dockerfile, bind
  mounts; compose secrets live in deploy/compose/secrets/ and are git-ignored (they are
  created by the operator, never committed).
- Cross-references: every secret/credential path in a relay.toml is provided by its
  deployment (a compose secret, a mounted Secret item, an active LoadCredential= line);
  Kubernetes volume/ConfigMap/Secret keys, probe ports and the admin port match.
- Every example relay.toml (compose, systemd, the Kubernetes ConfigMap) is accepted by the
  relay itself: `serve` is started on it (secret paths pointed at dummy files, listeners
  on 127.0.0.1:0) and must not exit with 78 (config error).
"""

import argparse
import fnmatch
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path.cwd()
DEPLOY = ROOT / "deploy"
PROBLEMS: list[str] = []

# Keys of [[asset]] / [tokens] / [server] whose values are files the relay reads.
FILE_KEYS = {
    "client_secret_file", "refresh_token_file", "key_file", "client_json",
    "service_account_json", "tls_cert", "tls_key", "upstream_ca",
    # [state] (Redis): its password and the CA of its certificate.
    "password_file", "ca_file",
}


def problem(where: str, text: str) -> None:
    PROBLEMS.append(f"{where}: {text}")
    print(f"  FAIL {where}: {text}")


def ok(text: str) -> None:
    print(f"  ok   {text}")


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------

def load_yaml(path: Path) -> list:
    try:
        with path.open(encoding="utf-8") as f:
            docs = [doc for doc in yaml.safe_load_all(f) if doc is not None]
    except yaml.YAMLError as err:
        problem(rel(path), f"YAML syntax: {err}")
        return []
    ok(f"{rel(path)}: YAML parses ({len(docs)} document(s))")
    return docs


# ---------------------------------------------------------------------------------------
# .dockerignore (the subset of Docker's semantics our allow-list uses: patterns relative to
# the context root, '*' and '?' within one path component, '**', '!' exceptions, the last
# matching pattern wins, a pattern matching a parent directory matches what is inside it)
# ---------------------------------------------------------------------------------------

def dockerignore_patterns() -> list[tuple[bool, list[str]]]:
    path = ROOT / ".dockerignore"
    patterns = []
    if not path.exists():
        return patterns
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:].strip() if negate else line
        line = os.path.normpath(line).lstrip("/")
        patterns.append((negate, line.split("/")))
    return patterns


def components_match(pattern: list[str], parts: list[str]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(components_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and components_match(pattern[1:], parts[1:])


def in_build_context(relpath: str, patterns) -> bool:
    parts = Path(relpath).parts
    excluded = False
    for negate, pattern in patterns:
        # The path itself or one of its parent directories.
        if any(components_match(pattern, list(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return not excluded


# ---------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, args = current.partition(" ")
        out.append((word.upper(), args.strip()))
        current = ""
    return out


def check_dockerfile(cargo_meta: dict | None) -> set[int]:
    print("Dockerfile and build context")
    dockerfile = DEPLOY / "Dockerfile"
    patterns = dockerignore_patterns()
    if not patterns:
        problem(".dockerignore", "missing or empty: the whole repository (target/, state/, config/relay.toml) would be the build context")
    exposed: set[int] = set()
    for instruction, args in dockerfile_instructions(dockerfile):
        if instruction == "COPY":
            words = shlex.split(args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue
            for src in paths[:-1]:
                if not (ROOT / src).exists():
                    problem(rel(dockerfile), f"COPY source {src} does not exist in the repository")
                elif not in_build_context(src, patterns):
                    problem(rel(dockerfile), f"COPY source {src} is excluded by .dockerignore")
                else:
                    ok(f"COPY {src}: in the build context")
        elif instruction == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in args.split()}
        elif instruction == "ENTRYPOINT":
            entry = json.loads(args)
            if entry[0] != "smtp-oauth-relay":
                problem(rel(dockerfile), f"ENTRYPOINT {entry[0]} is not the smtp-oauth-relay binary")
    # Everything cargo compiles for the release binary must be in the context: a build.rs
    # or a [[bin]] elsewhere would silently be missing from (or break) the image.
    if cargo_meta is not None:
        root_id = cargo_meta["resolve"]["root"]
        package = next(p for p in cargo_meta["packages"] if p["id"] == root_id)
        for target in package["targets"]:
            if not set(target["kind"]) & {"lib", "bin", "custom-build", "proc-macro"}:
                continue
            src = os.path.relpath(target["src_path"], ROOT)
            if in_build_context(src, patterns):
                ok(f"cargo target {target['name']} ({','.join(target['kind'])}): {src} is in the build context")
            else:
                problem(".dockerignore", f"cargo target {target['name']} needs {src}, which is not in the build context")
    check_context_manifest(patterns)
    return exposed


def check_context_manifest(patterns) -> None:
    """Cargo must accept the manifest with only what the image's two build steps see:
    Cargo.toml + Cargo.lock + a dummy src/ (dependency layer), then the whole context. An
    explicit [[test]]/[[bench]]/[[example]] whose file is not sent would fail the build."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    sent = [f for f in files if in_build_context(f, patterns) and (ROOT / f).is_file()]
    dummy = {"src/main.rs": "fn main() {}\n", "src/lib.rs": ""}
    for stage, contents in (("dependency layer", None), ("full build", sent)):
        with tempfile.TemporaryDirectory() as ctx_dir:
            ctx = Path(ctx_dir)
            for f in contents if contents is not None else ["Cargo.toml", "Cargo.lock"]:
                (ctx / f).parent.mkdir(parents=True, exist_ok=True)
                (ctx / f).write_bytes((ROOT / f).read_bytes())
            if contents is None:
                for f, text in dummy.items():
                    (ctx / f).parent.mkdir(parents=True, exist_ok=True)
                    (ctx / f).write_text(text)
            result = subprocess.run(["cargo", "metadata", "--locked", "--offline", "--format-version", "1"],
                                    cwd=ctx, capture_output=True, text=True)
            if result.returncode == 0:
                ok(f"cargo accepts the manifest in the image's {stage} ({len(contents or dummy) + (2 if contents is None else 0)} files)")
            else:
                problem("deploy/Dockerfile", f"cargo refuses the manifest in the image's {stage}:\n{result.stderr.strip()}")


# ---------------------------------------------------------------------------------------
# relay.toml files: cross-references and validation with the real binary
# ---------------------------------------------------------------------------------------

def relay_file_paths(config: dict) -> list[tuple[str, str]]:
    """(field, path) for every file the config makes the relay read."""
    found = []
    for section in ("server", "tokens", "state"):
        for key, value in config.get(section, {}).items():
            if key in FILE_KEYS:
                found.append((f"{section}.{key}", value))
    for i, asset in enumerate(config.get("asset", [])):
        for key, value in asset.items():
            if key in FILE_KEYS:
                found.append((f"asset[{i}].{key}", value))
    return found


def listen_port(value) -> int | None:
    value = value[0] if isinstance(value, list) else value
    return int(value.rsplit(":", 1)[1]) if value else None


def validate_with_binary(name: str, text: str, binary: Path, probe_paths=("/healthz", "/readyz")) -> None:
    """Starts `serve` on the config (the secrets it names are dummies in a scratch dir) and,
    when it has an [admin] listener, GETs the probe paths: each must answer 200."""
    config = tomllib.loads(text)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        for field, path in relay_file_paths(config):
            dummy = scratch / "files" / path.lstrip("/")
            dummy.parent.mkdir(parents=True, exist_ok=True)
            if field.endswith("key_file"):
                content = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"  # 32 zero bytes, base64
            elif field.endswith(("tls_cert", "ca_file")):
                # Parsed at startup: a real (throwaway, self-signed) certificate.
                content = (ROOT / "tests/fixtures/service-account-test-cert.pem").read_text()
            elif field.endswith("tls_key"):
                content = (ROOT / "tests/fixtures/service-account-test-key.pem").read_text()
            else:
                content = "dummy-value-for-the-config-check\n"
            dummy.write_text(content)
            dummy.chmod(0o600)
            text = text.replace(json.dumps(path), json.dumps(str(dummy)))
        if "tokens" in config and "path" in config["tokens"]:
            text = text.replace(json.dumps(config["tokens"]["path"]), json.dumps(str(scratch / "state/tokens.json")))
        admin_port = None
        if "admin" in config and "listen" in config["admin"]:
            with socket.socket() as probe:          # a free port for the admin listener
                probe.bind(("127.0.0.1", 0))
                admin_port = probe.getsockname()[1]
            text = text.replace(json.dumps(config["admin"]["listen"]), json.dumps(f"127.0.0.1:{admin_port}"))
        config_path = scratch / "relay.toml"
        config_path.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_OAUTH_RELAY_")}
        env["RUST_LOG"] = "info"
        proc = subprocess.Popen(
            [str(binary), "--config", str(config_path), "serve", "--listen", "127.0.0.1:0"],
            cwd=scratch, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            answers = {}
            if admin_port:
                answers = probe_admin(proc, admin_port, probe_paths)
            else:
                try:  # still running after 3 s: the config was accepted, listeners are up
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                ok(f"{name}: the relay accepts it and serves")
                for path, status in answers.items():
                    if status == 200:
                        ok(f"{name}: admin GET {path} -> 200")
                    else:
                        problem(name, f"admin GET {path} -> {status}, a probe expects 200")
                return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
        what = "config error (exit 78)" if proc.returncode == 78 else f"exited with {proc.returncode}"
        problem(name, f"the relay refuses it: {what}:\n{stderr.strip()}{stdout.strip()}")


def probe_admin(proc: subprocess.Popen, port: int, paths) -> dict:
    """GETs each path on the admin listener (waiting up to 5 s for it); path -> status."""
    answers: dict = {}
    deadline = time.monotonic() + 5
    for path in paths:
        while True:
            if proc.poll() is not None:
                return answers
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                    answers[path] = response.status
                break
            except urllib.error.HTTPError as err:
                answers[path] = err.code
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    answers[path] = f"no answer ({err})"
                    break
                time.sleep(0.1)
    return answers


# ---------------------------------------------------------------------------------------
# Compose
# ---------------------------------------------------------------------------------------

def check_compose(exposed: set[int], binary: Path | None) -> None:
    print("Docker Compose")
    path = DEPLOY / "compose.yaml"
    docs = load_yaml(path)
    if len(docs) != 1 or not isinstance(docs[0], dict) or "services" not in docs[0]:
        problem(rel(path), "expected one document with services:")
        return
    compose = docs[0]
    base = path.parent
    top_secrets = compose.get("secrets", {})
    for name, secret in top_secrets.items():
        source = (base / secret["file"]).resolve()
        if source.parent != (DEPLOY / "compose/secrets").resolve():
            problem(rel(path), f"secret {name}: {secret['file']} should be in deploy/compose/secrets/")
            continue
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(source)], cwd=ROOT).returncode == 0
        if ignored:
            ok(f"secret {name}: {rel(source)} is git-ignored (created by the operator)")
        else:
            problem(rel(path), f"secret {name}: {rel(source)} is not git-ignored")
    for svc_name, svc in compose["services"].items():
        build = svc.get("build")
        if build:
            context = (base / build["context"]).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            for what, p in (("build context", context), ("dockerfile", dockerfile)):
                if p.exists():
                    ok(f"{svc_name}: {what} {rel(p) or '.'} exists")
                else:
                    problem(rel(path), f"{svc_name}: {what} {p} does not exist")
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                p = (base / source).resolve()
                if p.exists():
                    ok(f"{svc_name}: bind mount {rel(p)} exists")
                else:
                    problem(rel(path), f"{svc_name}: bind mount source {source} does not exist")
            elif source not in compose.get("volumes", {}):
                problem(rel(path), f"{svc_name}: volume {source} is not declared under volumes:")
        for secret in svc.get("secrets", []):
            name = secret if isinstance(secret, str) else secret["source"]
            if name not in top_secrets:
                problem(rel(path), f"{svc_name}: secret {name} is not declared under secrets:")
        for net in svc.get("networks", []):
            if net not in compose.get("networks", {}):
                problem(rel(path), f"{svc_name}: network {net} is not declared under networks:")
    relay = compose["services"].get("relay", {})
    mounts = {v.split(":")[1]: v.split(":")[0] for v in relay.get("volumes", []) if isinstance(v, str)}
    config_source = mounts.get("/etc/smtp-oauth-relay/relay.toml")
    if not config_source:
        problem(rel(path), "relay: no relay.toml mounted at /etc/smtp-oauth-relay/relay.toml")
        return
    config_path = (base / config_source).resolve()
    text = config_path.read_text(encoding="utf-8")
    config = tomllib.loads(text)
    secret_names = {s if isinstance(s, str) else s.get("target", s["source"]) for s in relay.get("secrets", [])}
    for field, file in relay_file_paths(config):
        if file.startswith("/run/secrets/") and file.removeprefix("/run/secrets/") in secret_names:
            ok(f"{rel(config_path)} {field}: {file} is a secret of the relay service")
        else:
            problem(rel(config_path), f"{field}: {file} is not one of the relay service's secrets")
    store = config.get("tokens", {}).get("path", "state/tokens.json")
    store_abs = store if store.startswith("/") else "/var/lib/smtp-oauth-relay/" + store
    if not any(store_abs.startswith(m.rstrip("/") + "/") for m, src in mounts.items() if not src.startswith(".")):
        problem(rel(config_path), f"tokens.path {store_abs} is not on a named volume of the relay service")
    ports = {listen_port(config.get("server", {}).get("listen")), listen_port(config.get("admin", {}).get("listen"))} - {None}
    missing = ports - exposed
    if missing:
        problem("deploy/Dockerfile", f"EXPOSE lacks {sorted(missing)}, which {rel(config_path)} listens on")
    published = {str(p).rsplit(":", 1)[-1] for p in relay.get("ports", [])}
    if str(listen_port(config.get("server", {}).get("listen"))) in published:
        problem(rel(path), "relay: the SMTP port is published on the host; keep it on the compose network")
    if binary:
        validate_with_binary(rel(config_path), text, binary)


# ---------------------------------------------------------------------------------------
# Kubernetes
# ---------------------------------------------------------------------------------------

def check_kubernetes(exposed: set[int], binary: Path | None) -> None:
    print("Kubernetes")
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs = load_yaml(path)
        by_kind: dict[tuple[str, str], dict] = {}
        for doc in docs:
            if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
                problem(rel(path), "a document without apiVersion, kind and metadata")
                continue
            by_kind[(doc["kind"], doc["metadata"]["name"])] = doc
        configmaps = {n: d for (k, n), d in by_kind.items() if k == "ConfigMap"}
        secrets = {n: d for (k, n), d in by_kind.items() if k == "Secret"}

        def secret_keys(name: str) -> set[str] | None:
            doc = secrets.get(name)
            return None if doc is None else set(doc.get("data", {})) | set(doc.get("stringData", {}))

        for (kind, name), doc in by_kind.items():
            if kind not in ("Deployment", "StatefulSet", "DaemonSet"):
                continue
            pod = doc["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            # A StatefulSet's per-pod PersistentVolumeClaims are volumes too.
            for claim in doc["spec"].get("volumeClaimTemplates", []):
                volumes[claim["metadata"]["name"]] = {"persistentVolumeClaim": claim}
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                cname = f"{name}/{container['name']}"
                named_ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    port = container.get(probe, {}).get("httpGet", {}).get("port")
                    if isinstance(port, str) and port not in named_ports:
                        problem(rel(path), f"{cname}: {probe} uses port {port}, which the container does not name")
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref and not ref.get("optional") and ref["key"] not in (secret_keys(ref["name"]) or set()):
                        problem(rel(path), f"{cname}: env {env['name']} needs key {ref['key']} of Secret {ref['name']}")
                mounts = {}
                for mount in container.get("volumeMounts", []):
                    if mount["name"] not in volumes:
                        problem(rel(path), f"{cname}: volumeMount {mount['name']} has no volume")
                        continue
                    mounts[mount["mountPath"]] = volumes[mount["name"]]
                if container.get("restartPolicy") == "Always" or "smtp-oauth-relay" in container.get("image", ""):
                    check_k8s_relay(path, cname, container, mounts, named_ports, configmaps, secret_keys, exposed, binary)
            for vname, volume in volumes.items():
                source = volume.get("configMap") or volume.get("secret")
                if not source:
                    continue
                keys = (set(configmaps[source["name"]].get("data", {})) if "configMap" in volume and source["name"] in configmaps
                        else secret_keys(source.get("secretName", "")))
                for item in source.get("items", []):
                    if keys is not None and item["key"] not in keys:
                        problem(rel(path), f"volume {vname}: key {item['key']} is not in its ConfigMap/Secret")


def check_k8s_relay(path, cname, container, mounts, named_ports, configmaps, secret_keys, exposed, binary):
    config_file = next((e["value"] for e in container.get("env", []) if e["name"] == "SMTP_OAUTH_RELAY_CONFIG"),
                       "/etc/smtp-oauth-relay/relay.toml")

    def provided_by(file: str):
        """The file as provided by a mounted ConfigMap/Secret: (volume, key) or None."""
        for mount_path, volume in mounts.items():
            prefix = mount_path.rstrip("/") + "/"
            if not file.startswith(prefix):
                continue
            inside = file[len(prefix):]
            source = volume.get("configMap") or volume.get("secret")
            if source is None:
                return (volume, None)
            items = source.get("items")
            if items is None:
                return (volume, inside)
            for item in items:
                if item["path"] == inside:
                    return (volume, item["key"])
            return None
        return None

    found = provided_by(config_file)
    if not found or "configMap" not in found[0] or found[0]["configMap"]["name"] not in configmaps:
        problem(rel(path), f"{cname}: {config_file} is not provided by a ConfigMap in this file")
        return
    text = configmaps[found[0]["configMap"]["name"]]["data"][found[1]]
    name = f"{rel(path)} ConfigMap {found[0]['configMap']['name']} {found[1]}"
    config = tomllib.loads(text)
    ok(f"{name}: TOML parses")
    for field, file in relay_file_paths(config):
        hit = provided_by(file)
        if hit and "secret" in hit[0]:
            ok(f"{name} {field}: {file} is mounted from Secret key {hit[1]}")
        else:
            problem(name, f"{field}: {file} is not mounted into {cname} from a Secret")
    store = config.get("tokens", {}).get("path", "state/tokens.json")
    hit = provided_by(store if store.startswith("/") else "/var/lib/smtp-oauth-relay/" + store)
    if not hit or "configMap" in hit[0] or "secret" in hit[0]:
        problem(name, f"tokens.path {store} is not on a writable volume of {cname}")
    admin_port = listen_port(config.get("admin", {}).get("listen"))
    if admin_port is None:
        problem(name, "no [admin] listen: the probes have nothing to talk to")
    elif admin_port not in named_ports.values():
        problem(rel(path), f"{cname}: the admin port {admin_port} is not a containerPort")
    elif config["admin"]["listen"].startswith("127."):
        problem(name, "[admin] listen is loopback: kubelet probes connect to the pod IP")
    else:
        ok(f"{cname}: probes go to the admin listener on :{admin_port}")
    if admin_port and admin_port not in exposed:
        problem("deploy/Dockerfile", f"EXPOSE lacks the admin port {admin_port}")
    if binary:
        paths = sorted({container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")
                        if "httpGet" in container.get(p, {})})
        validate_with_binary(name, text, binary, paths)


# ---------------------------------------------------------------------------------------
# systemd
# ---------------------------------------------------------------------------------------

def check_systemd(binary: Path | None) -> None:
    print("systemd")
    unit = DEPLOY / "systemd/smtp-oauth-relay.service"
    lines = unit.read_text(encoding="utf-8").splitlines()
    credentials = {l.split("=", 1)[1].split(":", 1)[0] for l in lines if l.startswith("LoadCredential=")}
    exec_start = next(l.split("=", 1)[1] for l in lines if l.startswith("ExecStart="))
    argv = shlex.split(exec_start)
    config_file = argv[argv.index("--config") + 1] if "--config" in argv else None
    if config_file != "/etc/smtp-oauth-relay/relay.toml":
        problem(rel(unit), f"ExecStart's --config is {config_file}, the docs say /etc/smtp-oauth-relay/relay.toml")
    example = DEPLOY / "systemd/relay.toml"
    text = example.read_text(encoding="utf-8")
    config = tomllib.loads(text)
    for field, file in relay_file_paths(config):
        prefix = "/run/credentials/smtp-oauth-relay.service/"
        if file.startswith(prefix) and file.removeprefix(prefix) in credentials:
            ok(f"{rel(example)} {field}: credential {file.removeprefix(prefix)} is loaded by the unit")
        else:
            problem(rel(example), f"{field}: {file} is not an active LoadCredential= of the unit")
    store = config.get("tokens", {}).get("path", "")
    if not store.startswith("/var/lib/smtp-oauth-relay/"):
        problem(rel(example), "tokens.path should be in the unit's StateDirectory, /var/lib/smtp-oauth-relay/")
    if binary:
        validate_with_binary(rel(example), text, binary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", type=Path, help="a built smtp-oauth-relay, to validate the example configs")
    args = parser.parse_args()
    binary = args.binary.resolve() if args.binary else None
    if binary and not os.access(binary, os.X_OK):
        print(f"error: {binary} is not an executable", file=sys.stderr)
        return 2
    metadata = subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                              cwd=ROOT, capture_output=True, text=True)
    cargo_meta = None
    if metadata.returncode != 0:
        problem("Cargo.lock", f"`cargo metadata --locked` failed (the image builds with --locked):\n{metadata.stderr.strip()}")
    else:
        cargo_meta = json.loads(metadata.stdout)
        ok("Cargo.lock is up to date (cargo metadata --locked)")
    exposed = check_dockerfile(cargo_meta)
    check_compose(exposed, binary)
    check_kubernetes(exposed, binary)
    check_systemd(binary)
    if PROBLEMS:
        print(f"\n{len(PROBLEMS)} problem(s) in deploy files", file=sys.stderr)
        return 1
    print("\ndeploy files: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Validate the deployment files (deploy/, Dockerfile) as far as this machine allows:
#   - the systemd unit: `systemd-analyze verify`, the required hardening directives and
#     an offline `systemd-analyze security` exposure threshold;
#   - deploy/kubernetes: every file parses as YAML, the kustomization lists every
#     manifest and renders (when kubectl or kustomize is installed), the Deployment's
#     containers probe /readyz and /healthz and run as non-root with a read-only root
#     file system, labels, selectors and port names line up, and the ConfigMap's
#     ccmetrics.toml is accepted by `ccmetrics check-config` (when a binary exists);
#   - the Dockerfile: build inputs exist, its Rust image matches Cargo.toml's
#     rust-version, and the default-config edits it makes still apply.
# Tools that are missing are skipped with a note; PyYAML is installed with pip when
# missing. Nothing outside a temporary directory is written. Exit status 0 when every
# check passed, 1 otherwise (each problem is printed on stderr).
#
# Environment: CCMETRICS_BIN=path to a ccmetrics binary for the config check (default:
# target/release/ccmetrics, target/debug/ccmetrics or ccmetrics on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

UNIT=deploy/systemd/ccmetrics.service
K8S=deploy/kubernetes
EXEC_START='ExecStart=/usr/local/bin/ccmetrics serve --config /etc/ccmetrics/ccmetrics.toml'
# Highest acceptable `systemd-analyze security` exposure, in tenths (the unit scores 1.4).
SECURITY_THRESHOLD=20

problems=0
fail() { echo "FAIL: $*" >&2; problems=$((problems + 1)); }
ok() { echo "ok:   $*"; }
skip() { echo "skip: $*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ---------------------------------------------------------------------------- systemd
echo "== systemd unit ($UNIT)"
if [ ! -f "$UNIT" ]; then
  fail "$UNIT is missing"
else
  if grep -qxF "$EXEC_START" "$UNIT"; then
    ok "ExecStart runs /usr/local/bin/ccmetrics serve with /etc/ccmetrics/ccmetrics.toml"
  else
    fail "$UNIT: expected the line '$EXEC_START'"
  fi

  # The hardening the unit promises (deploy/README.md); a lost line is a regression.
  required=(
    "User=ccmetrics" "StateDirectory=ccmetrics" "ProtectSystem=strict" "ProtectHome=yes"
    "PrivateTmp=yes" "NoNewPrivileges=yes" "ProtectKernelTunables=yes"
    "ProtectKernelModules=yes" "ProtectKernelLogs=yes" "ProtectControlGroups=yes"
    "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" "RestrictNamespaces=yes"
    "LockPersonality=yes" "MemoryDenyWriteExecute=yes" "SystemCallFilter=@system-service"
    "CapabilityBoundingSet=" "Restart=on-failure" "TimeoutStopSec=60" "KillSignal=SIGTERM"
    "EnvironmentFile=-/etc/ccmetrics/env" "LimitNOFILE=65536"
  )
  missing=()
  for line in "${required[@]}"; do
    grep -qxF "$line" "$UNIT" || missing+=("$line")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    ok "all ${#required[@]} required directives present"
  else
    for line in "${missing[@]}"; do fail "$UNIT: missing directive '$line'"; done
  fi

  if command -v systemd-analyze >/dev/null 2>&1; then
    # `verify` rejects a unit whose ExecStart binary does not exist, and the daemon is
    # not installed here: check a copy (same file name, so the same unit name) whose
    # ExecStart runs an existing binary with the same arguments.
    mkdir -p "$tmp/systemd"
    copy="$tmp/systemd/ccmetrics.service"
    sed 's#^ExecStart=/usr/local/bin/ccmetrics #ExecStart=/bin/true #' "$UNIT" >"$copy"
    if ! grep -q '^ExecStart=/bin/true ' "$copy"; then
      fail "could not substitute ExecStart in the temporary copy of $UNIT"
    else
      # verify prints warnings (unknown keys, bad values) yet may exit 0: any output
      # is a problem.
      if out=$(systemd-analyze verify "$copy" 2>&1) && [ -z "$out" ]; then
        ok "systemd-analyze verify (ExecStart pointed at /bin/true in a temporary copy)"
      else
        fail "systemd-analyze verify $UNIT:"$'\n'"$out"
      fi
      version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
      if [ "${version:-0}" -ge 250 ] 2>/dev/null; then
        if out=$(systemd-analyze security --offline=yes --no-pager \
          --threshold="$SECURITY_THRESHOLD" "$copy" 2>&1); then
          ok "systemd-analyze security: $(echo "$out" | grep -o 'Overall exposure level.*' || echo "within threshold")"
        else
          fail "systemd-analyze security: exposure above $SECURITY_THRESHOLD/100:"$'\n'"$(echo "$out" | grep -E '✗|Overall')"
        fi
      else
        skip "systemd-analyze security --offline needs systemd >= 250 (found ${version:-unknown})"
      fi
    fi
  else
    skip "systemd-analyze not installed (Debian package: systemd); unit not verified"
  fi
fi

# ------------------------------------------------------------------------- Kubernetes
echo "== Kubernetes manifests ($K8S)"
if ! command -v python3 >/dev/null 2>&1; then
  fail "python3 is needed to check $K8S"
else
  if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    echo "installing PyYAML (pip install pyyaml)"
    python3 -m pip install --quiet pyyaml >&2 || true
  fi
  if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    fail "PyYAML is not available and could not be installed (python3 -m pip install pyyaml)"
  else
    bin=${CCMETRICS_BIN:-}
    if [ -z "$bin" ]; then
      for b in target/release/ccmetrics target/debug/ccmetrics "$(command -v ccmetrics || true)"; do
        if [ -n "$b" ] && [ -x "$b" ]; then bin=$b; break; fi
      done
    fi
    set +e
    CHECK_BIN="$bin" CHECK_TMP="$tmp" python3 -u - "$K8S" <<'PY'
import os, subprocess, sys
import yaml

k8s = sys.argv[1]
problems = 0

def fail(msg):
    global problems
    problems += 1
    print(f"FAIL: {msg}", file=sys.stderr)

def ok(msg):
    print(f"ok:   {msg}")

def skip(msg):
    print(f"skip: {msg}")

# Every YAML file parses; every document names its apiVersion, kind and name.
docs = []  # (file, doc)
parsed = []
files = sorted(f for f in os.listdir(k8s) if f.endswith((".yaml", ".yml")))
if not files:
    fail(f"no YAML files in {k8s}")
for f in files:
    path = os.path.join(k8s, f)
    try:
        with open(path) as fh:
            loaded = [d for d in yaml.safe_load_all(fh) if d is not None]
    except yaml.YAMLError as e:
        fail(f"{path}: not valid YAML: {e}")
        continue
    if not loaded:
        fail(f"{path}: empty")
    for d in loaded:
        if not isinstance(d, dict) or not d.get("apiVersion") or not d.get("kind"):
            fail(f"{path}: a document without apiVersion/kind")
            continue
        if d["kind"] != "Kustomization" and not (d.get("metadata") or {}).get("name"):
            fail(f"{path}: {d['kind']} without metadata.name")
        docs.append((f, d))
    parsed.append(f)
if parsed:
    ok(f"{len(parsed)} of {len(files)} files parse as YAML: {', '.join(parsed)}")

def of_kind(kind):
    return [(f, d) for f, d in docs if d["kind"] == kind]

# The kustomization lists exactly the other manifests.
kust = of_kind("Kustomization")
if len(kust) != 1:
    fail(f"expected one Kustomization in {k8s}, found {len(kust)}")
else:
    listed = kust[0][1].get("resources") or []
    others = {f for f, d in docs if d["kind"] != "Kustomization"}
    for r in listed:
        if r not in others:
            fail(f"kustomization.yaml lists {r}, which is not a manifest in {k8s}")
    for f in sorted(others - set(listed)):
        fail(f"{f} is not listed in kustomization.yaml resources")
    if set(listed) == others:
        ok(f"kustomization.yaml lists all {len(others)} manifests")

# v1.Container fields: a misspelt key (readinesProbe) is otherwise silently ignored
# by this check and rejected only by the API server.
CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "workingDir", "ports", "env",
    "envFrom", "resources", "resizePolicy", "restartPolicy", "volumeMounts",
    "volumeDevices", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "securityContext", "stdin",
    "stdinOnce", "tty",
}

def http_path(probe):
    return ((probe or {}).get("httpGet") or {}).get("path")

deployments = of_kind("Deployment")
if not deployments:
    fail(f"no Deployment in {k8s}")
pod_labels = {}
container_ports = {}  # port name -> number
secret_keys = set()
config_maps = set()
for f, d in deployments:
    before = problems
    name = d["metadata"]["name"]
    spec = d.get("spec") or {}
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        fail(f"{f}: Deployment {name}: selector {selector} does not match the pod labels {labels}")
    pod_labels[name] = labels
    pod = tmpl.get("spec") or {}
    psc = pod.get("securityContext") or {}
    grace = pod.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or grace < 60:
        fail(f"{f}: Deployment {name}: terminationGracePeriodSeconds should be >= 60 (final commit of every partition), is {grace}")
    for v in pod.get("volumes") or []:
        if "configMap" in v:
            config_maps.add(v["configMap"].get("name"))
    containers = (pod.get("initContainers") or []) + (pod.get("containers") or [])
    if not pod.get("containers"):
        fail(f"{f}: Deployment {name}: no containers")
    for c in containers:
        where = f"{f}: Deployment {name}, container {c.get('name')}"
        unknown = sorted(set(c) - CONTAINER_FIELDS)
        if unknown:
            fail(f"{where}: unknown container fields {unknown}")
        is_init = c in (pod.get("initContainers") or [])
        csc = c.get("securityContext") or {}
        port_names = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        container_ports.update(port_names)
        if not is_init:
            if http_path(c.get("readinessProbe")) != "/readyz":
                fail(f"{where}: readinessProbe must be an httpGet on /readyz")
            if http_path(c.get("livenessProbe")) != "/healthz":
                fail(f"{where}: livenessProbe must be an httpGet on /healthz")
            for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = ((c.get(kind) or {}).get("httpGet") or {}).get("port")
                if port is not None and port not in port_names and port not in port_names.values():
                    fail(f"{where}: {kind} port {port!r} is not a port of the container")
        # Non-root: runAsNonRoot (container or pod), and no explicit uid 0.
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True:
            fail(f"{where}: runAsNonRoot must be true (container or pod securityContext)")
        if uid == 0:
            fail(f"{where}: runAsUser is 0 (root)")
        if csc.get("readOnlyRootFilesystem") is not True:
            fail(f"{where}: readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(f"{where}: allowPrivilegeEscalation must be false")
        if csc.get("privileged"):
            fail(f"{where}: must not be privileged")
        drop = [x.upper() for x in (csc.get("capabilities") or {}).get("drop") or []]
        if "ALL" not in drop:
            fail(f"{where}: capabilities.drop must contain ALL")
        if (csc.get("capabilities") or {}).get("add"):
            fail(f"{where}: adds capabilities")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{where}: seccompProfile must be RuntimeDefault (is {seccomp})")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not (res.get(part) or {}).get("memory"):
                fail(f"{where}: resources.{part}.memory is not set")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret_keys.add((ref.get("name"), ref.get("key"), bool(ref.get("optional"))))
    if problems == before:
        ok(f"Deployment {name}: {len(containers)} container(s) probe /readyz and /healthz, run as non-root "
           f"(uid {uid}), read-only root, no capabilities, seccomp {seccomp}, grace {grace}s")

# Services select the pods and target a named container port; ServiceMonitors and
# PodDisruptionBudgets select what exists.
all_pod_labels = list(pod_labels.values())
def selects_pods(sel):
    return bool(sel) and any(all(l.get(k) == v for k, v in sel.items()) for l in all_pod_labels)

services = {}
for f, d in of_kind("Service"):
    before = problems
    name = d["metadata"]["name"]
    spec = d.get("spec") or {}
    services[name] = d
    if not selects_pods(spec.get("selector") or {}):
        fail(f"{f}: Service {name}: selector {spec.get('selector')} matches no Deployment's pods")
    for p in spec.get("ports") or []:
        tp = p.get("targetPort", p.get("port"))
        if tp not in container_ports and tp not in container_ports.values():
            fail(f"{f}: Service {name}: targetPort {tp!r} is not a container port")
    if problems == before:
        ok(f"Service {name} ({spec.get('type', 'ClusterIP')}): ports "
           + ", ".join(f"{p.get('name')}={p.get('port')}" for p in spec.get("ports") or []))

for f, d in of_kind("ServiceMonitor"):
    before = problems
    name = d["metadata"]["name"]
    spec = d.get("spec") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    matched = [s for s in services.values()
               if sel and all(((s.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in sel.items())]
    if not matched:
        fail(f"{f}: ServiceMonitor {name}: selector {sel} matches no Service's labels")
    port_names = {p.get("name") for s in matched for p in (s.get("spec") or {}).get("ports") or []}
    for ep in spec.get("endpoints") or []:
        if ep.get("port") not in port_names:
            fail(f"{f}: ServiceMonitor {name}: endpoint port {ep.get('port')!r} is not a named port of the selected Service")
        if ep.get("path", "/metrics") != "/metrics":
            fail(f"{f}: ServiceMonitor {name}: scrapes {ep.get('path')}, not /metrics")
    if not spec.get("endpoints"):
        fail(f"{f}: ServiceMonitor {name}: no endpoints")
    if problems == before:
        ok(f"ServiceMonitor {name}: " + ", ".join(
            f"{ep.get('path', '/metrics')} on port {ep.get('port')} every {ep.get('interval', 'default')}"
            for ep in spec.get("endpoints") or []))

for f, d in of_kind("PodDisruptionBudget"):
    name = d["metadata"]["name"]
    sel = ((d.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    if not selects_pods(sel):
        fail(f"{f}: PodDisruptionBudget {name}: selector {sel} matches no Deployment's pods")
    else:
        ok(f"PodDisruptionBudget {name}: maxUnavailable {(d.get('spec') or {}).get('maxUnavailable')}")

# The ConfigMap's ccmetrics.toml: TOML syntax, listen port = container port, and the
# real parser (check-config) with the Deployment's environment when a binary exists.
cms = {d["metadata"]["name"]: (f, d) for f, d in of_kind("ConfigMap")}
for name in sorted(n for n in config_maps if n):
    if name not in cms:
        fail(f"the Deployment mounts ConfigMap {name}, which is not in {k8s}")
for name, (f, d) in sorted(cms.items()):
    toml_text = (d.get("data") or {}).get("ccmetrics.toml")
    if toml_text is None:
        fail(f"{f}: ConfigMap {name} has no ccmetrics.toml key")
        continue
    try:
        import tomllib
    except ImportError:
        tomllib = None
        skip("TOML syntax of ccmetrics.toml (needs Python >= 3.11 for tomllib)")
    if tomllib:
        try:
            cfg = tomllib.loads(toml_text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{f}: ConfigMap {name}: ccmetrics.toml is not valid TOML: {e}")
            continue
        listen = (cfg.get("http") or {}).get("listen", "")
        port = listen.rsplit(":", 1)[-1]
        if not port.isdigit() or int(port) not in container_ports.values():
            fail(f"{f}: ConfigMap {name}: [http] listen {listen!r} is not on a container port {sorted(container_ports.values())}")
        elif listen.startswith("127.") or listen.startswith("[::1]"):
            fail(f"{f}: ConfigMap {name}: [http] listen {listen!r} is loopback-only; probes and scrapes would fail")
        else:
            ok(f"ConfigMap {name}: ccmetrics.toml is valid TOML, [http] listen {listen}")
    binary = os.environ.get("CHECK_BIN")
    if not binary:
        skip("ccmetrics check-config on the ConfigMap (no ccmetrics binary; set CCMETRICS_BIN)")
        continue
    path = os.path.join(os.environ["CHECK_TMP"], f"{name}.toml")
    with open(path, "w") as fh:
        fh.write(toml_text)
    # Placeholders for the Secret's required values (the config is only parsed, nothing
    # connects). Optional keys stay unset, as they do when the Secret lacks them.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CCMETRICS_")}
    env.update({
        "CCMETRICS__STORE__URL": "postgres://ccmetrics:placeholder@db.invalid:5432/ccmetrics",
        "CCMETRICS__KAFKA__INSTANCE_ID": "ccmetrics-check",
        "CCMETRICS_RDKAFKA_SASL_PASSWORD": "placeholder",
    })
    r = subprocess.run([binary, "check-config", "--config", path], env=env,
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        fail(f"{binary} check-config rejects ConfigMap {name}'s ccmetrics.toml:\n{(r.stderr or r.stdout).strip()}")
    else:
        ok(f"ConfigMap {name}: accepted by `{binary} check-config`")

if secret_keys:
    ok("Secret keys referenced: " + ", ".join(
        f"{n}/{k}{' (optional)' if o else ''}" for n, k, o in sorted(secret_keys)))

sys.exit(min(problems, 100))
PY
    rc=$?
    set -e
    problems=$((problems + rc)) # the Python part exits with its number of problems
  fi
fi

if command -v kubectl >/dev/null 2>&1; then
  render=(kubectl kustomize "$K8S")
elif command -v kustomize >/dev/null 2>&1; then
  render=(kustomize build "$K8S")
else
  render=()
fi
if [ ${#render[@]} -gt 0 ]; then
  if out=$("${render[@]}" 2>&1); then
    ok "${render[*]} renders $(grep -c '^kind:' <<<"$out") objects"
  else
    fail "${render[*]} failed:"$'\n'"$out"
  fi
else
  skip "kustomization not rendered (neither kubectl nor kustomize installed)"
fi

# ------------------------------------------------------------------------- Dockerfile
echo "== Dockerfile"
before=$problems
if [ ! -f Dockerfile ]; then
  fail "Dockerfile is missing"
else
  for input in Cargo.toml Cargo.lock src migrations benches/engine.rs config/ccmetrics.toml; do
    [ -e "$input" ] || fail "Dockerfile build input $input is missing"
  done
  rust_version=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
  image_version=$(sed -n 's/^FROM rust:\([0-9.]*\)-bookworm AS build$/\1/p' Dockerfile)
  if [ -n "$rust_version" ] && [ "$rust_version" = "$image_version" ]; then
    ok "build image rust:$image_version-bookworm matches Cargo.toml rust-version"
  else
    fail "Dockerfile build image rust:${image_version:-?} does not match Cargo.toml rust-version ${rust_version:-?}"
  fi
  # The Dockerfile rewrites these two default lines of config/ccmetrics.toml for the
  # container (and fails its build when they are gone); notice that before a build.
  for line in 'url = "sqlite://data/ccmetrics.db"' 'listen = "127.0.0.1:9464"'; do
    if grep -qxF "$line" config/ccmetrics.toml; then
      grep -qF "^$line\$" Dockerfile || fail "Dockerfile no longer rewrites '$line'"
    else
      fail "config/ccmetrics.toml no longer contains '$line'; update the sed edits in Dockerfile"
    fi
  done
  grep -qx 'EXPOSE 9898' Dockerfile || fail "Dockerfile: expected EXPOSE 9898"
  grep -qx 'USER 10001:10001' Dockerfile || fail "Dockerfile: expected USER 10001:10001"
  for ignored in target .git; do
    grep -qx "$ignored" .dockerignore 2>/dev/null || fail ".dockerignore should exclude $ignored"
  done
  [ "$problems" -ne "$before" ] ||
    ok "Dockerfile inputs, config edits, EXPOSE 9898, USER 10001 and .dockerignore"
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    skip "image not built by this script (docker build -t ccmetrics . takes a full release build)"
  else
    skip "no Docker daemon: the image is not built here"
  fi
fi

echo
if [ "$problems" -eq 0 ]; then
  echo "check-deploy: all checks passed"
else
  echo "check-deploy: $problems problem(s), see FAIL lines above" >&2
  exit 1
fi

#!/usr/bin/env bash
# Validates deploy/ as far as this machine allows, offline; run by scripts/test.sh. Installs its
# tools when missing (kubectl from Debian's kubernetes-client, promtool from Debian's prometheus
# package, docker-compose, podman + buildah, PyPI's kubernetes-validate in a venv under
# target/deploy-tools) and skips the installs when they are there. What it cannot do here, it
# says: no image registry is reachable, so the Dockerfile's build stages (Rust toolchain image,
# cargo-chef) cannot run; its `runtime` stage is built for real from a locally built binary on a
# locally made base, and containers cannot run in this sandbox, so the image's binary is run by
# chroot instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/target/deploy-tools
mkdir -p "$tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sudo=()
[[ $EUID -ne 0 ]] && command -v sudo >/dev/null && sudo=(sudo)
apt_updated=
apt_install() {
  if [[ -z $apt_updated ]]; then
    "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null && apt_updated=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    --no-install-recommends "$@" >/dev/null
}
step() { echo "-- deploy-check: $*"; }

# ---- tools -----------------------------------------------------------------------------------
command -v kubectl >/dev/null || { step "installing kubernetes-client (kubectl)"; apt_install kubernetes-client; }
command -v docker-compose >/dev/null || { step "installing docker-compose"; apt_install docker-compose; }
promtool=$(command -v promtool || true)
if [[ -z $promtool ]]; then
  promtool=$tools/prometheus/usr/bin/promtool
  if [[ ! -x $promtool ]]; then
    # Only promtool is needed: unpack the package instead of installing it, which would also
    # install (and on some systems start) a Prometheus server.
    step "unpacking promtool from Debian's prometheus package"
    [[ -n $apt_updated ]] || { "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null; apt_updated=1; }
    (cd "$work" && apt-get download prometheus >/dev/null && dpkg-deb -x prometheus_*.deb "$tools/prometheus")
  fi
fi
if [[ ! -x $tools/venv/bin/kubernetes-validate ]]; then
  step "installing kubernetes-validate (PyPI) into target/deploy-tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q kubernetes-validate
fi
py=$tools/venv/bin/python # has PyYAML, a dependency of kubernetes-validate
command -v objcopy >/dev/null || { step "installing binutils (objcopy)"; apt_install binutils; }
if ! command -v podman >/dev/null || ! command -v buildah >/dev/null; then
  step "installing podman and buildah"
  apt_install podman buildah || echo "!!! deploy-check: podman/buildah could not be installed: the image build is SKIPPED" >&2
fi

# ---- Kubernetes --------------------------------------------------------------------------------
kustomize_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')
if [[ -z $kustomize_version || $kustomize_version -lt 4 ]]; then
  echo "deploy-check: kubectl's built-in kustomize is older than v4 (kubectl < 1.21); deploy/kubernetes needs a newer kubectl" >&2
  exit 1
fi
step "kubectl kustomize: base and production overlay"
kubectl kustomize deploy/kubernetes/base >"$work/base.yaml"
kubectl kustomize deploy/kubernetes/overlays/production >"$work/production.yaml"
for f in base production; do
  echo "   $f: $(grep -c '^kind:' "$work/$f.yaml") resources ($(grep '^kind:' "$work/$f.yaml" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}' | sed 's/, $//'))"
done

# kubernetes-validate has the built-in kinds' schemas only; it cannot validate the CRDs
# (ScaledObject, TriggerAuthentication from KEDA; PodMonitor, PrometheusRule from the Prometheus
# Operator): those are skipped by it explicitly and checked structurally below instead.
step "kubernetes-validate --strict (built-in kinds; CRDs skipped: ScaledObject, TriggerAuthentication, PodMonitor, PrometheusRule)"
"$tools/venv/bin/kubernetes-validate" --strict --quiet --no-warn \
  "$work/base.yaml" "$work/production.yaml" deploy/kubernetes/base/secret.example.yaml
echo "   valid"

step "manifest rules (KEDA on the work queues only, probes, grace, sizing, secrets, rules in sync)"
"$py" - "$work/base.yaml" "$work/production.yaml" <<'EOF'
import re, sys, tomllib, yaml

def load(path):
    return [d for d in yaml.safe_load_all(open(path)) if d]

def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    assert m, f"duration {text!r}"
    return int(m[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m[2]]

defaults = tomllib.load(open("config/default.toml", "rb"))
secret_keys = set(load("deploy/kubernetes/base/secret.example.yaml")[0]["stringData"])
alerts = yaml.safe_load(open("deploy/prometheus/alerts.yaml"))
problems = []

def check(ok, message):
    if not ok:
        problems.append(message)

for path in sys.argv[1:]:
    docs = load(path)
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    config = kinds["ConfigMap"][0]["data"]
    prefix = config["HOOKRELAY__AMQP__PREFIX"]
    check(int(config["HOOKRELAY__AMQP__PREFETCH"]) == defaults["amqp"]["prefetch"],
          f"{path}: prefetch {config['HOOKRELAY__AMQP__PREFETCH']} is not the default {defaults['amqp']['prefetch']}")
    grace = seconds(config["HOOKRELAY__WORKER__SHUTDOWN_GRACE"])
    reconnect = seconds(config["HOOKRELAY__AMQP__RECONNECT_TIMEOUT"])
    deployments = {d["metadata"]["name"]: d for d in kinds["Deployment"]}
    worker = deployments["hookrelay-worker"]
    check("replicas" not in worker["spec"], f"{path}: the worker Deployment sets replicas (KEDA owns it)")
    pod = worker["spec"]["template"]["spec"]
    check(pod["terminationGracePeriodSeconds"] > grace,
          f"{path}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= worker.shutdown_grace {grace}")
    check(bool(pod.get("topologySpreadConstraints")), f"{path}: worker has no topology spread")
    for d in deployments.values():
        for c in d["spec"]["template"]["spec"]["containers"]:
            name = f"{path}: {d['metadata']['name']}/{c['name']}"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                check(probe in c, f"{name}: no {probe}")
            check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{name}: liveness is not /healthz")
            check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{name}: readiness is not /readyz")
            check("memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"],
                  f"{name}: resources incomplete")
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "hookrelay":
                    check(ref["key"] in secret_keys, f"{name}: Secret key {ref['key']} missing from secret.example.yaml")
    wc = pod["containers"][0]
    startup = wc["startupProbe"]
    check(startup["periodSeconds"] * startup["failureThreshold"] > reconnect,
          f"{path}: the worker's startupProbe gives up before amqp.reconnect_timeout ({reconnect}s)")
    check(any(e["name"] == "HOOKRELAY__REDIS__SECRET_KEY" for e in wc["env"]), f"{path}: worker without redis.secret_key")
    queues = [t["metadata"]["queueName"] for s in kinds["ScaledObject"] for t in s["spec"]["triggers"]]
    check(sorted(queues) == sorted([f"{prefix}.events", f"{prefix}.deliveries"]),
          f"{path}: KEDA scales on {queues}, not exactly the two work queues of prefix {prefix}")
    check(not any(".retry." in q or ".dlq." in q for q in queues), f"{path}: KEDA scales on a delay or dead-letter queue")
    targets = {s["spec"]["scaleTargetRef"]["name"] for s in kinds["ScaledObject"]}
    check(targets == {"hookrelay-worker"}, f"{path}: ScaledObject targets {targets}")
    check(len(kinds.get("PodDisruptionBudget", [])) == 2, f"{path}: expected a PDB for worker and API")
    check(kinds["PodMonitor"][0]["spec"]["podMetricsEndpoints"][0]["port"] == "ops", f"{path}: PodMonitor not on the ops port")
    check(kinds["PrometheusRule"][0]["spec"]["groups"] == alerts["groups"],
          f"{path}: the PrometheusRule's groups differ from deploy/prometheus/alerts.yaml")

rules = [r for g in alerts["groups"] for r in g["rules"]]
names = [r["alert"] for r in rules]
runbook = open("docs/runbook.md").read().lower()
for r in rules:
    n = r["alert"]
    check(f"## {n.lower()}" in runbook, f"docs/runbook.md has no section '## {n}'")
    check(r["annotations"].get("runbook") == f"docs/runbook.md#{n.lower()}", f"{n}: runbook annotation does not point at its section")
if problems:
    print("\n".join("   FAIL " + p for p in problems))
    sys.exit(1)
print(f"   ok ({len(names)} alerts, each with a runbook section)")
EOF

# ---- Prometheus, Grafana -------------------------------------------------------------------------
step "promtool check rules deploy/prometheus/alerts.yaml"
"$promtool" check rules deploy/prometheus/alerts.yaml
step "promtool test rules deploy/prometheus/alerts.test.yaml (each alert fires on made-up series as intended)"
"$promtool" test rules deploy/prometheus/alerts.test.yaml
echo "   $(grep -c 'alertname:' deploy/prometheus/alerts.test.yaml) alert evaluations, covering all $(grep -c '^      - alert:' deploy/prometheus/alerts.yaml) alerts"
step "promtool check config --syntax-only deploy/prometheus/prometheus.yml"
"$promtool" check config --syntax-only deploy/prometheus/prometheus.yml
step "Grafana dashboard parses; every panel has a query and the templated datasource"
"$py" - <<'EOF'
import json
d = json.load(open("deploy/grafana/hookrelay.json"))
panels = [p for p in d["panels"] if p["type"] != "row"]
bad = [p["title"] for p in panels
       if not p.get("targets") or any(not t.get("expr") for t in p["targets"])
       or p["datasource"]["uid"] != "${datasource}"]
assert not bad, f"panels without a query or datasource: {bad}"
print(f"   ok ({len(panels)} panels, {sum(len(p['targets']) for p in panels)} queries; their metric names are checked against a live worker by tests/it/metrics.rs)")
EOF

# ---- compose -----------------------------------------------------------------------------------
step "docker-compose config (with and without the monitoring profile)"
export HOOKRELAY_ADMIN_TOKEN=deploy-check-admin-token-0123456789 HOOKRELAY_REDIS_SECRET_KEY=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=
docker-compose -f deploy/compose.yaml --profile monitoring config >"$work/compose.yaml"
"$py" - "$work/compose.yaml" <<'EOF'
import os, sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
plain = sorted(n for n, s in services.items() if not s.get("profiles"))
monitoring = sorted(n for n, s in services.items() if "monitoring" in s.get("profiles", []))
assert plain == ["api", "rabbitmq", "redis", "store-init", "worker"], plain
assert monitoring == ["grafana", "prometheus"], monitoring
assert services["worker"]["deploy"]["replicas"] == 3
mounts = 0
for name, s in services.items():
    for v in s.get("volumes", []):
        source = v["source"] if isinstance(v, dict) else v.split(":")[0]
        if source.startswith("/"):
            mounts += 1
            assert os.path.exists(source), f"{name}: bind-mounted {source} does not exist"
print(f"   ok: {', '.join(plain)}; profile monitoring: {', '.join(monitoring)}; 3 worker replicas; {mounts} bind mounts exist")
EOF

# ---- systemd -----------------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify (the binary's absence from /usr/local/bin is expected here)"
  mkdir -p "$work/systemd"
  cp deploy/systemd/* "$work/systemd/"
  ln -s hookrelay-worker@.service "$work/systemd/hookrelay-worker@9101.service"
  out=$(cd "$work/systemd" && systemd-analyze verify --man=no ./hookrelay-api.service ./hookrelay-worker@9101.service 2>&1 |
    grep -v 'Command /usr/local/bin/hookrelay is not executable' || true)
  [[ -z $out ]] || { echo "$out" >&2; exit 1; }
  echo "   ok"
else
  echo "!!! deploy-check: systemd-analyze not found: the systemd units are NOT verified" >&2
fi

# ---- image -------------------------------------------------------------------------------------
if command -v podman >/dev/null; then
  step "image: building deploy/Dockerfile's runtime stage with podman from target/debug/hookrelay (no registry: the build stages are not run)"
  [[ -x target/debug/hookrelay ]] || cargo build --locked --quiet --bin hookrelay
  # Its own storage (vfs: plain directories, removed with the temp dir), never the machine's.
  pod=(podman --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
  mkdir -p "$work/img/base/etc/ssl/certs" "$work/img/base/tmp" "$work/img/bin/out"
  # A stand-in for distroless/cc: the binary's shared libraries, CA certificates, user 65532.
  for lib in $(ldd target/debug/hookrelay | grep -o '/[^ ]*'); do
    mkdir -p "$work/img/base$(dirname "$lib")"
    cp -L "$lib" "$work/img/base$lib"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$work/img/base/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$work/img/base/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$work/img/base/etc/group"
  chmod 1777 "$work/img/base/tmp"
  objcopy --strip-debug target/debug/hookrelay "$work/img/bin/out/hookrelay"
  printf 'FROM scratch\nCOPY base/ /\n' >"$work/img/Base"
  printf 'FROM scratch\nCOPY bin/ /\n' >"$work/img/Bin"
  "${pod[@]}" build -q -f "$work/img/Base" -t localhost/hookrelay-check-base "$work/img" >/dev/null
  "${pod[@]}" build -q -f "$work/img/Bin" -t localhost/hookrelay-check-binary "$work/img" >/dev/null
  "${pod[@]}" build -q --pull=never --target runtime \
    --build-arg RUNTIME_BASE=localhost/hookrelay-check-base \
    --build-arg BINARY_FROM=localhost/hookrelay-check-binary \
    -f deploy/Dockerfile -t localhost/hookrelay-check . >/dev/null
  config=$("${pod[@]}" image inspect localhost/hookrelay-check --format '{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}')
  size=$("${pod[@]}" image inspect localhost/hookrelay-check --format '{{.Size}}')
  echo "   built: user, entrypoint, cmd = $config; $((size / 1000000)) MB (debug binary, stripped)"
  [[ $config == '65532:65532 ["/usr/local/bin/hookrelay"] ["worker"]' ]] || { echo "deploy-check: unexpected image config" >&2; exit 1; }
  # Running a container needs cgroups and rlimits this sandbox does not give: run the image's
  # own filesystem with chroot instead, as its user, with only its libraries.
  mkdir "$work/rootfs"
  id=$("${pod[@]}" create localhost/hookrelay-check)
  "${pod[@]}" export "$id" | tar -x -C "$work/rootfs"
  "${pod[@]}" rm "$id" >/dev/null
  types=$(chroot --userspec=65532:65532 "$work/rootfs" /usr/local/bin/hookrelay events --json |
    "$py" -c 'import json, sys; print(len(json.load(sys.stdin)["event_types"]))')
  echo "   the image's binary runs as 65532 on the image's libraries: 'hookrelay events' lists $types event types"
  [[ $types == 27 ]] || exit 1
  "${pod[@]}" rmi -a -f >/dev/null 2>&1 || true
else
  echo "!!! deploy-check: podman unavailable: the image was NOT built" >&2
fi
echo "-- deploy-check: all passed"

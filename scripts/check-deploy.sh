#!/usr/bin/env bash
# Checks what ships for Kubernetes (run by test.sh):
#   - the manifests in deploy/kubernetes validate, strictly, against a recent Kubernetes
#     (kubernetes-validate from PyPI, in a virtualenv under target/);
#   - the static binary the image holds builds (scripts/build-static.sh).
# tests/deploy.rs checks that their policies load and their command lines parse.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT_DIR"
K8S_VERSION=${K8S_VERSION:-1.37.0}
KV_VERSION=${KV_VERSION:-1.37.0}
venv=target/deploy-venv
if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    echo "check-deploy: installing kubernetes-validate $KV_VERSION"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's python3 makes virtualenvs only with python3-venv.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" deploy/kubernetes/*.yaml
echo "check-deploy: manifests valid for Kubernetes $K8S_VERSION"
./scripts/build-static.sh

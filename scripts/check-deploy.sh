#!/usr/bin/env bash
# Verifies the deployment files with real tools: systemd-analyze verify for the units, and
# kubernetes-validate and yamllint for the manifests. CI installs the tools; elsewhere a missing
# tool is reported and skipped, unless MODELHOST_REQUIRE_DEPLOY_TOOLS=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
require=${MODELHOST_REQUIRE_DEPLOY_TOOLS:-0}
missing() {
    if [ "$require" = 1 ]; then
        echo "error: $1 is not installed" >&2
        exit 1
    fi
    echo "SKIPPED: $1 is not installed ($2)"
}

# systemd: verify copies whose ExecStart points at the binaries this checkout built.
if command -v systemd-analyze >/dev/null; then
    cargo build --quiet --release --bins
    units=$(mktemp -d)
    trap 'rm -rf "$units"' EXIT
    for unit in deploy/systemd/*.service; do
        sed "s|/usr/local/bin/|$root/target/release/|g" "$unit" > "$units/$(basename "$unit")"
    done
    # verify prints problems and exits non-zero on errors; warnings about the missing service
    # user and paths of the target machine are not errors.
    # The template, and an instance of it. (systemd-analyze 252 cannot verify instance names
    # containing ':' such as cuda:0, though systemd runs them; the cpu instance covers %i.)
    cp "$units/modelhost-worker@.service" "$units/modelhost-worker@cpu.service"
    for unit in modelhost.service modelhost-worker@.service modelhost-worker@cpu.service; do
        out=$(systemd-analyze verify --man=no "$units/$unit" 2>&1) || {
            echo "$out" >&2
            exit 1
        }
        if echo "$out" | grep -Ei "unknown|invalid|failed|bad|ignoring" >&2; then
            exit 1
        fi
    done
    echo "ok   systemd-analyze verify: modelhost.service, modelhost-worker@.service, modelhost-worker@cpu.service"
else
    missing systemd-analyze "apt-get install systemd"
fi

# Kubernetes: schema validation and lint.
py=$(scripts/pyenv.sh)
"$py" -m kubernetes_validate --strict deploy/kubernetes/*.yaml
"$py" -m yamllint --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' deploy/kubernetes/
echo "ok   kubernetes-validate and yamllint: deploy/kubernetes/*.yaml"

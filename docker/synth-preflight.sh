#!/usr/bin/env bash
# `make synth`'s checks on the host before `docker run`, each failure one `trimflow: error:` line and exit 2:
# the docker command and its daemon, the image, the Xilinx folder to mount, and that the build's paths lie inside
# the checkout (the only folder the container sees, mounted at /opt/trimflow; absolute host paths do not exist
# there). Usage: synth-preflight.sh DOCKER IMAGE XILINX_DIR BUILD_DIR [CONFIG] [MODEL]
set -uo pipefail

fail() { printf 'trimflow: error: make synth: %s\n' "$*" >&2; exit 2; }

docker=$1 image=$2 xilinx=$3 build_dir=$4 config=${5:-} model=${6:-}
command -v "$docker" >/dev/null 2>&1 || fail "'$docker' not found; install Docker (or set DOCKER=podman)"
"$docker" info >/dev/null 2>&1 || fail "the $docker daemon is not reachable ('$docker info' fails); start it, or \
add your user to the docker group"
"$docker" image inspect "$image" >/dev/null 2>&1 || fail "no image $image; build it with: make docker"
[ -d "$xilinx" ] || fail "XILINX_DIR=$xilinx is not a folder; set XILINX_DIR to the folder that holds \
Vivado/<version> (the container mounts it at the same path)"
for var in "BUILD_DIR=$build_dir" "CONFIG=$config" "MODEL=$model"; do
  path=${var#*=}
  case "$path" in
    /* | .. | ../*) fail "${var%%=*}=$path lies outside the checkout, which is all the container sees; move it \
inside and give its path relative to the checkout" ;;
  esac
done

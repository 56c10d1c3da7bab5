#!/usr/bin/env bash
# Builds cframe-controller, cframe-edge and cframectl into dist/ (or the
# directory given), with sample controller.toml and edge.toml (the
# walkthrough's `./build.sh`). VERSION overrides the version the programs
# report (default: git describe).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
mkdir -p "$out"
version=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
for cmd in cframe-controller cframe-edge cframectl; do
  go build -trimpath -ldflags "-s -w -X github.com/cframe/cframe/orchestrator/metrics.Version=$version" -o "$out/$cmd" "./cmd/$cmd"
done
cp orchestrator/config/samples/controller.toml orchestrator/config/samples/edge.toml "$out/"
echo "built $out/: cframe-controller cframe-edge cframectl controller.toml edge.toml ($version)"

#!/usr/bin/env bash
# Builds cframe-controller, cframe-edge and cframectl into dist/, with sample
# controller.toml and edge.toml (the walkthrough's `./build.sh`).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p dist
version=$(git describe --always --dirty 2>/dev/null || echo dev)
for cmd in cframe-controller cframe-edge cframectl; do
  go build -trimpath -ldflags "-s -w -X github.com/cframe/cframe/orchestrator/metrics.Version=$version" -o "dist/$cmd" "./cmd/$cmd"
done
cp orchestrator/config/samples/controller.toml orchestrator/config/samples/edge.toml dist/
echo "built dist/: cframe-controller cframe-edge cframectl controller.toml edge.toml ($version)"

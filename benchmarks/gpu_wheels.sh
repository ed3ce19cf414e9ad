#!/usr/bin/env bash
# Download, here, the wheels the device image lacks for dmpose into .whl/ (carried by the `run` tool).
# The device image (KINDS.md, 2026-11-17) has torch, triton, numpy, scipy, opencv-python-headless, pyyaml,
# safetensors, typer, rich, typing-extensions; it lacks pydantic (+ pydantic-core, annotated-types,
# typing-inspection) and pycocotools. POT (tests/test_sinkhorn.py, POT rows of the bench) is optional: WITH_POT=1.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
PKGS="pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 pycocotools==2.0.11"
[ "${WITH_POT:-0}" = 1 ] && PKGS="$PKGS pot==0.9.7.post1"
mkdir -p .whl
for p in $PKGS; do
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p"
done
ls -la .whl; du -sh .whl

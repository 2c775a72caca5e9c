#!/usr/bin/env bash
# What bench/accelerator.py needs on the lent accelerator that its image lacks
# (docs/performance.md, "On a lent accelerator"), gathered here into .device/ (ignored by
# git) to travel with the `device` command: .device/wheels/, the Python 3.12 x86-64 wheels
# of our dependencies the image does not have, and .device/multi30k/, the Multi30k files
# of ../shared/data when this checkout has them (../shared does not travel). The image
# has jax, flax, optax, orbax-checkpoint, sentencepiece, sacrebleu, tensorstore, absl-py,
# numpy, protobuf, etils, pyyaml, regex, click, joblib, tqdm, requests, psutil, pyarrow,
# matplotlib and wrapt.
#
#   bash bench/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .device && mkdir -p .device/wheels
dir=.device/wheels
# What setup.py pins, then what those need that the image lacks (their METADATA).
packages=(
  grain==0.2.18 array-record==0.8.6 tensorflow-datasets==4.9.10 ml-collections==1.1.0
  tensorboardX==2.6.5 sacremoses==0.2.0
  dm-tree==0.1.10 immutabledict==4.3.1 promise==2.3 simple-parsing==0.1.9
  docstring-parser==0.18.0 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2
  googleapis-common-protos==1.76.0 portpicker==1.6.0
  importlib_resources==7.1.0
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
for package in "${packages[@]}"; do
  # promise is a source distribution only: build its (pure Python) wheel here.
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
       --implementation cp "${platforms[@]}" -d "$dir" "$package" 2>/dev/null; then
    python3 -m pip wheel -q --no-deps -w "$dir" "$package"
  fi
done
if [ -d ../shared/data/multi30k ]; then
  mkdir -p .device/multi30k && cp ../shared/data/multi30k/*.gz .device/multi30k/
fi
du -sh .device/*

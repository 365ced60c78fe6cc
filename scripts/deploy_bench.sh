#!/usr/bin/env bash
# docs/DEPLOY.md's measurements on a GPU machine that has no package manager or network.
#
#   scripts/deploy_bench.sh prepare [LENET5.proxcl DEMO.proxcl]   (here, on Debian: gathers .deploy/)
#   scripts/deploy_bench.sh run                                    (there, with .deploy/ carried)
#
# prepare builds proxcl-run (runtime/, release) and puts into .deploy/ (git-ignored; carry it): the binary and
# its stripped size, libcjson.so.1 (the one library it links that such a machine lacks), the
# Fashion-MNIST files, pyopencl's wheels for Python 3.12 (for the Python runtime's side) and the two
# model files when given.  run installs the wheels, trains the model files if .deploy/ has none
# (LeNet-5 at 99 % zeros; the demo's LeNet-300-100), and runs scripts/deploy_bench.py on the first
# GPU; results go to $OUT (or .deploy/out).
set -euo pipefail
cd "$(dirname "$0")/.."
D=.deploy

prepare() {
    make -s -C runtime deps
    make -s -C runtime
    rm -rf "$D" && mkdir -p "$D"/bin "$D"/lib "$D"/data/fashion-mnist "$D"/models "$D"/whl
    cp runtime/build/proxcl-run "$D"/bin/
    strip -o "$D"/bin/proxcl-run.stripped runtime/build/proxcl-run
    cp -L "$(ldconfig -p | awk '/libcjson.so.1 .*x86-64/ {print $NF; exit}')" "$D"/lib/libcjson.so.1
    cp /usr/share/datasets/fashion-mnist/*.gz "$D"/data/fashion-mnist/
    [ $# -ge 2 ] && cp "$1" "$D"/models/lenet5.proxcl && cp "$2" "$D"/models/demo.proxcl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$D"/whl pyopencl pytools platformdirs siphash24
    du -sh "$D"
}

run() {
    OUT=${OUT:-$D/out}
    mkdir -p "$OUT"
    exec > >(tee "$OUT"/log.txt) 2>&1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$D"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PROXCL_DATA=$PWD/$D/data LD_LIBRARY_PATH=$PWD/$D/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if ! ldconfig -p | grep -q 'libOpenCL.so.1 '; then      # no system ICD loader: the one pyopencl ships
        PROXCL_OPENCL_LIBRARY=$(ls /usr/local/cuda*/lib64/libOpenCL.so.1 /tmp/site/pyopencl/.libs/libOpenCL*.so* 2>/dev/null | head -1)
        export PROXCL_OPENCL_LIBRARY
    fi
    B=$D/bin/proxcl-run
    $B devices
    python3 -m proxcl devices
    for m in lenet5 demo; do
        if [ ! -f "$D/models/$m.proxcl" ]; then
            if [ $m = lenet5 ]; then args="--model lenet5 --target-density 0.01 --epochs 6 --debias-epochs 3"
            else args="--model lenet300 --target-density 0.02 --epochs 20 --debias-epochs 10"; fi
            python3 -m proxcl train $args --device gpu --out "$OUT/$m.proxcl" --no-progress
            cp "$OUT/$m.proxcl" "$D/models/$m.proxcl"
        fi
    done
    python3 scripts/deploy_bench.py --bin "$B" --model "$D/models/lenet5.proxcl" --demo "$D/models/demo.proxcl" \
        --data "$D/data/fashion-mnist" --device gpu --json "$OUT/deploy_bench.json"
    echo "stripped proxcl-run: $(stat -c %s "$D"/bin/proxcl-run.stripped) bytes"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) run ;;
    *) echo "usage: $0 prepare [LENET5.proxcl DEMO.proxcl] | run" >&2; exit 2 ;;
esac

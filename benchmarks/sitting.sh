#!/usr/bin/env bash
# One benchmark sitting: ours (simulated and distributed runtimes) and the peers (SPU, CrypTen) on the same
# machine, one run after another, nothing else running. Prints/appends JSON lines to $OUT.
#
#   SPU_PY=~/venv-spu/bin/python CRYPTEN_PY=~/venv-crypten/bin/python PEERS=../shared/peers \
#       bash benchmarks/sitting.sh [mlp|lenet|vit|all]
# (the peer venvs: bash ../shared/peers/setup.sh spu|crypten DIR). Missing peer venvs are skipped.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHAT=${1:-mlp}
DATA=${SMPC_DATA_DIR:-../shared/data}
PEERS=${PEERS:-../shared/peers}
OUT=${OUT:-benchmarks/results/sitting.jsonl}
mkdir -p "$(dirname "$OUT")"
OUT=$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")
DATA=$(cd "$DATA" && pwd)
PEERS=$(cd "$PEERS" 2>/dev/null && pwd || echo "$PEERS")
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
run() { echo "== $*" >&2; "$@" 2>>"$WORK/stderr.log" | grep '^{' | tee -a "$OUT"; }
peer() { echo "== $*" >&2; (cd "$WORK" && "$@" --out "$OUT" >>"$WORK/stdout.log" 2>>"$WORK/stderr.log"); tail -1 "$OUT"; }

if [ "$WHAT" = mlp ] || [ "$WHAT" = all ]; then
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode throughput --repeats 3
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode throughput --repeats 3 --runtime distributed
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode throughput --repeats 1 --runtime distributed --parties alice,bob,carol
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode latency --repeats 3 --runtime distributed
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode latency --repeats 3 --runtime distributed --gap-ms 50
    if [ -x "${SPU_PY:-}" ]; then
        peer "$SPU_PY" "$PEERS/spu_mlp.py" --mode mp --protocol SEMI2K --n 10000 --batch 1000 --repeats 3 --mnist-dir "$DATA/MNIST/raw"
    fi
    if [ -x "${CRYPTEN_PY:-}" ]; then
        peer "$CRYPTEN_PY" "$PEERS/crypten_mlp.py" --n 10000 --batch 1000 --provider TTP --mnist-dir "$DATA/MNIST/raw"
    fi
fi
if [ "$WHAT" = modes ]; then  # one-side-private modes beside "both" (issue 19): seed MLP 10k, LeNet 1000
    for RT in simulated distributed; do
        for PRIV in both data model; do
            run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --mode throughput --repeats 3 --runtime $RT --private $PRIV
            run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model lenet --mode throughput --n 1000 --batch 100 --repeats 3 --runtime $RT --private $PRIV
        done
    done
fi
if [ "$WHAT" = lenet ] || [ "$WHAT" = all ]; then
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model lenet --mode throughput --n 1000 --batch 100 --repeats 2
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model lenet --mode throughput --n 1000 --batch 100 --repeats 1 --runtime distributed
    if [ -x "${SPU_PY:-}" ]; then
        peer "$SPU_PY" "$PEERS/spu_lenet.py" --n 1000 --batch 100 --repeats 2 --mnist-dir "$DATA/MNIST/raw"
    fi
    if [ -x "${CRYPTEN_PY:-}" ]; then
        peer "$CRYPTEN_PY" "$PEERS/crypten_lenet.py" --n 1000 --batch 100 --provider TTP --repeats 2 --mnist-dir "$DATA/MNIST/raw"
    fi
fi
if [ "$WHAT" = vit ] || [ "$WHAT" = all ]; then  # the peers' tiny ViT, first 1000 test images, batch 100
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model vit --mode throughput --repeats 2 --runtime distributed
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model vit --mode throughput --repeats 1 --runtime distributed --dealer-overlap yes
    run $PY benchmarks/bench_mnist.py --data-dir "$DATA" --model vit --mode throughput --repeats 1
    if [ -x "${SPU_PY:-}" ]; then
        peer "$SPU_PY" "$PEERS/spu_vit.py" --n 1000 --batch 100 --repeats 2 --mnist-dir "$DATA/MNIST/raw"
        peer "$SPU_PY" "$PEERS/spu_vit.py" --n 1000 --batch 100 --repeats 2 --gelu tanh --mnist-dir "$DATA/MNIST/raw"
    fi
    if [ -x "${CRYPTEN_PY:-}" ]; then
        peer "$CRYPTEN_PY" "$PEERS/crypten_vit.py" --n 1000 --batch 100 --repeats 2 --mnist-dir "$DATA/MNIST/raw"
    fi
fi
echo "stderr of the runs: $WORK/stderr.log" >&2

#!/usr/bin/env bash
# Every quality table of benchmarks/RESULTS.md for the shipped Fashion-MNIST model (each command writes its own
# section to RESULTS.md). On a 2-core machine shared with other work, OpenMP threads spin against each other and
# timings become meaningless; THREADS=1 (default here) keeps them stable. Sample counts are sized to the 2-core
# development machine (the schedule ablation is 7 schedules x 4 values of T).
# Usage: [SPEED=1] benchmarks/run_all.sh [NUM_TABLE] [NUM_TRADEOFF] [NUM_SCHEDULES]
set -euo pipefail
export OMP_NUM_THREADS=${THREADS:-1}
maskgit bench table --num "${1:-1000}" --results benchmarks/RESULTS.md
maskgit bench tradeoff --num "${2:-500}" --results benchmarks/RESULTS.md
maskgit bench schedules --num "${3:-300}" --steps 4,8,12,16 --results benchmarks/RESULTS.md
maskgit bench int8 --num "${1:-1000}" --results benchmarks/RESULTS.md
# speed at the ImageNet-256 size: alone on the machine, all cores (about 20 minutes on 2 cores)
if [ "${SPEED:-0}" = 1 ]; then
  OMP_NUM_THREADS=$(nproc) maskgit bench speed --config maskgit-imagenet256 --batches 1,8 --repeats 3 --compile --int8 --results benchmarks/RESULTS.md
fi

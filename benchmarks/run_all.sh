#!/usr/bin/env bash
# Every quality/speed table of benchmarks/RESULTS.md for the shipped Fashion-MNIST model, in one go.
# Usage: benchmarks/run_all.sh [NUM_SAMPLES]   (each command appends its own section to RESULTS.md)
set -euo pipefail
NUM=${1:-1000}
maskgit bench table --num "$NUM"
maskgit bench tradeoff --num "$NUM"
maskgit bench schedules --num "$NUM" --steps 4,8,12,16
maskgit bench speed --config maskgit-imagenet256 --batches 1,8 --repeats 3

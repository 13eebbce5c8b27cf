#!/usr/bin/env bash
# The commands behind docs/probes.md section 9 (ResNet-56, CIFAR-10 test set, 2 shared cores).
# Activations are cached in /tmp/gati-acts; each fit/eval prints its table, the JSON lands here.
set -euo pipefail
cd "$(dirname "$0")/../../.."
A=${GATI_ASSETS:-../shared/assets}
OUT=docs/results/probes
M="--arch resnet56 --weights $A/models/resnet56-4bfd9763.th --data $A/cifar10/test.npz --cache /tmp/gati-acts"
G="nice -n 10 .venv/bin/gati probes"

# --- uniform: fit on images 0..5000 (+ a mirrored and 4 perturbed copies of each), calibrate
#     on 5000..7000, evaluate on 7000..10000, which neither fitting nor calibration saw.
FIT="--start 0 --stop 5000 --calib-start 5000 --calib-stop 7000 --augment-flip --augment-views 4"
FIT="$FIT --select-fraction 0.4 --filters 128"
$G fit $M $FIT --out /tmp/b-flip-emp                      # trains every (cut, variant) once
for sel in auto max-softmax; do
  for cal in ltt empirical; do
    $G fit $M $FIT --previous /tmp/b-flip-emp --warm-epochs 0 --selector $sel \
      --calibration $cal --delta 0.1 --out /tmp/b-u-$sel-$cal
    $G eval $M --start 7000 --stop 10000 --bundle /tmp/b-u-$sel-$cal \
      --json $OUT/uniform-$sel-$cal.json
    $G eval $M --start 7000 --stop 10000 --bundle /tmp/b-u-$sel-$cal --lookup remote \
      --json $OUT/uniform-$sel-$cal-remote.json
  done
done

# --- workloads: one 8000-request stream over the whole test set (seed 0); fit on the 3000
#     requests before each window, evaluate on the next 1000 (windows 3000..8000), warm-starting
#     each fit from the previous window's bundle, as the online trainer does.
rolling() {  # WORKLOAD TAG fit-flags...
  local W=$1 TAG=$2; shift 2
  local S="--workload $W --requests 8000 --seed 0 --start 0 --stop 10000" prev=""
  for w in 3000 4000 5000 6000 7000; do
    $G fit $M $S --window-from $((w - 3000)) --window-to $w --calibration empirical \
      --margin 0.005 --out /tmp/roll-$W-$TAG-$w $prev "$@"
    $G eval $M $S --window-from $w --window-to $((w + 1000)) --bundle /tmp/roll-$W-$TAG-$w \
      --json /tmp/roll-$W-$TAG-$w.json
    prev="--previous /tmp/roll-$W-$TAG-$w"
  done
}
# Sections 9.4 and 9.5: 16-filter conv probes (the default); the -filters128 files: 128, as
# the uniform fit uses (combined by combine.py).
rolling instance-locality v6 --selector logistic   # learned selector, gated
rolling instance-locality v4 --selector logistic --memory-rows window
rolling instance-locality msm --selector max-softmax  # calibrated max-softmax
rolling class-locality v5 --selector logistic
rolling class-locality auto --selector auto
rolling class-locality msm --selector max-softmax
rolling instance-locality v6w --selector logistic --filters 128
.venv/bin/python $OUT/combine.py instance-locality v6w $OUT/instance-locality-window-next-filters128.json
rolling class-locality auto128 --selector auto --filters 128
.venv/bin/python $OUT/combine.py class-locality auto128 $OUT/class-locality-window-next-filters128.json
# The per-window JSONs are combined into $OUT/<workload>-*.json: per window (plan, selectors,
# calibration, agreement, hit rate, expected speedup, seen/new split, per-layer table) and over
# the stream (mean agreement, worst window, speedup = sum of full / sum of expected latency).

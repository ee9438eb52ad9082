#!/usr/bin/env bash
# Issue 20's stage-2 table: does distilling the streaming student from S_N pay, and under which change?
# Run after ./run.sh (stages 0-6; it needs exp/teacher, exp/stage1, exp/stage2, exp/stage2_labels_only and
# data/lang_test). Each variant is one stage-5 run of conf/stage2.yaml (or stage2_labels_only.yaml) with
# overrides, from the same S_N, into exp/s2v/<name>; then one stage-6 decode of all of them (HLG, the demo
# test set) writes exp/s2v/RESULTS.md and results.json, next to the demo's stage2 / stage2_labels_only.
#   local/stage2_variants.sh [--only "name ..."] [--conf-dir conf/tiny]   (about 35 min on 2 idle CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
only=""
conf_dir=conf
while [ $# -gt 0 ]; do
  case "$1" in
    --only) only=$2; shift 2 ;;
    --conf-dir) conf_dir=$2; shift 2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
. ./path.sh

# name | config | overrides (docs/status.md, "Stage 2": what each tests)
variants=(   # objective.lfmmi_weight is stated in each: the demo's stage2.yaml sets 1.0, the paper's form 0.0
  "paper|stage2|objective.lfmmi_weight=0.0"
  "delay2|stage2|objective.lfmmi_weight=0.0 streaming.teacher_delay_frames=2"
  "delay4|stage2|objective.lfmmi_weight=0.0 streaming.teacher_delay_frames=4"
  "teacher-chunk24|stage2|objective.lfmmi_weight=0.0 streaming.teacher_chunk_frames=24"
  "teacher-chunk48|stage2|objective.lfmmi_weight=0.0 streaming.teacher_chunk_frames=48"
  "hidden-only|stage2|objective.lfmmi_weight=0.0 objective.alpha=0.0"
  "kd-plus-labels|stage2|objective.lfmmi_weight=1.0"
  "dynamic-chunks|stage2|objective.lfmmi_weight=0.0 streaming.chunk_frames=[24,12,48]"
  "teacher-T|stage2|objective.lfmmi_weight=0.0 teacher=exp/teacher/model"
  "teacher-T-plus-labels|stage2|objective.lfmmi_weight=1.0 teacher=exp/teacher/model"
  "long480|stage2|objective.lfmmi_weight=0.0 train.max_steps=480"
  "long480-labels-only|stage2_labels_only|train.max_steps=480"
  "long480-kd-plus-labels|stage2|objective.lfmmi_weight=1.0 train.max_steps=480"
)
models="  - {name: streaming, path: exp/stage2/model}
  - {name: streaming-labels-only, path: exp/stage2_labels_only/model}"
for v in "${variants[@]}"; do
  IFS='|' read -r name conf overrides <<< "$v"
  if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then continue; fi
  models+="
  - {name: $name, path: exp/s2v/$name/model}"
  if [ -f "exp/s2v/$name/model/config.json" ]; then echo "$name: trained already"; continue; fi
  echo "=== $name: $conf.yaml $overrides"
  # shellcheck disable=SC2086
  python -m distill.bin.train --config "$conf_dir/$conf.yaml" exp_dir="exp/s2v/$name" $overrides
done
mkdir -p exp/s2v
cat > exp/s2v/decode.yaml <<EOF
base: ../../$conf_dir/decode.yaml
exp_root: exp/s2v
out_dir: exp/s2v/decode
title: Stage-2 variants on the in-house demo corpus (local/stage2_variants.sh)
teacher: streaming-labels-only
models:
$models
EOF
python -m distill.bin.decode --config exp/s2v/decode.yaml
echo "table: exp/s2v/RESULTS.md"

#!/usr/bin/env bash
# DistillW2V2 recipe for GigaSpeech.
#   ./run.sh --corpus-dir /data/GigaSpeech        (a release: GigaSpeech.json + audio/**.opus)
# Subsets (XS/S/M/L/XL, DEV, TEST) are set in conf/data.yaml (or --subsets "XS DEV TEST").
# Stages: 0 data | 1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation
#         5 stage-2 (streaming) distillation | 6 decode + score
set -euo pipefail
run_dir=$PWD           # where run.sh was started: relative paths given as options are taken from here
cd "$(dirname "$0")"

stage=0
stop_stage=6
force=false            # redo stages even when their done-marker is there
nj=4                   # parallel jobs for data preparation
device=cpu             # cpu or cuda
conf_dir=conf          # directory of the stage configs; files missing there come from conf/ (conf/tiny: CI-sized)
corpus_dir=download/GigaSpeech   # the GigaSpeech release directory
subsets=               # space-separated subsets; empty = those in conf/data.yaml
nproc=1                # processes (GPUs) per node for training; > 1 runs torchrun
stage1_configs="stage1 stage1_labels_only stage1_frame_kl"   # stage 4: student and baselines
stage2_configs="stage2 stage2_labels_only"                   # stage 5: streaming student and baseline
teacher_model=         # a wav2vec 2.0 checkpoint: Hugging Face directory or fairseq .pt (default: conf/teacher.yaml)

help_message="Usage: $0 [options]   (DistillW2V2 on GigaSpeech)"
. utils/parse_options.sh
. ./path.sh
. utils/stage.sh

subset_override=()
if [ -n "$subsets" ]; then subset_override=("parts=[$(echo $subsets | tr ' ' ',')]"); fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "data" data/manifests "$(conf data)" "$corpus_dir" "$subsets"; then
  python -m distill.bin.prepare_manifests --config "$(conf data)" \
    corpus_dir="$corpus_dir" out_dir=data/manifests nj="$nj" "${subset_override[@]}"
  stage_end
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ] && stage_begin 1 "lang" data/lang "$(conf lang)" data/manifests/.done.stage0; then
  python -m distill.bin.prepare_lang --config "$(conf lang)" manifest_dir=data/manifests lang_dir=data/lang
  stage_end
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && stage_begin 2 "denominator graph" data/lang "$(conf den)" data/lang/.done.stage1; then
  python -m distill.bin.build_den_graph --config "$(conf den)" lang_dir=data/lang
  stage_end
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ] && stage_begin 3 "teacher" exp/teacher "$(conf teacher)" data/lang/.done.stage2 "$teacher_model"; then
  teacher_override=()
  if [ -n "$teacher_model" ]; then teacher_override=("model.path=$teacher_model"); fi
  launch distill.bin.train --config "$(conf teacher)" device="$device" "${teacher_override[@]}"
  stage_end
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  for c in $stage1_configs; do   # the DistillW2V2 student, then the baselines (labels only, frame KL, ...)
    if stage_begin 4 "stage-1 distillation: $c" "exp/$c" "$(conf "$c")" exp/teacher/.done.stage3; then
      launch distill.bin.train --config "$(conf "$c")" device="$device"
      stage_end
    fi
  done
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  for c in $stage2_configs; do   # the streaming student (from exp/stage1), then its labels-only baseline
    if stage_begin 5 "stage-2 (streaming) distillation: $c" "exp/$c" "$(conf "$c")" exp/stage1/.done.stage4; then
      launch distill.bin.train --config "$(conf "$c")" device="$device"
      stage_end
    fi
  done
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ] && stage_begin 6 "decode + score" exp/decode \
    "$(conf decode_graph)" "$(conf decode)" exp/*/.done.stage[345]; then
  python -m distill.bin.build_decode_graph --config "$(conf decode_graph)" lang_dir=data/lang out_dir=data/lang_test
  python -m distill.bin.decode --config "$(conf decode)" device="$device" nj="$nj"
  stage_end
fi
log "done (stages $stage..$stop_stage)"

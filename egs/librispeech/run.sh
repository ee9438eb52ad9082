#!/usr/bin/env bash
# DistillW2V2 recipe for LibriSpeech.
#   ./run.sh --corpus-dir /data/LibriSpeech-root          (a directory holding LibriSpeech/<part>/...)
#   ./run.sh --download true --corpus-dir download        (lhotse's downloader; needs internet)
# Parts are set in conf/data.yaml (or --parts "train-clean-100 dev-clean test-clean").
# Stages: 0 data (here) | 1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation
#         5 stage-2 (streaming) distillation | 6 decode + score | 7 export  (../TEMPLATE/stages.sh)
set -euo pipefail
run_dir=$PWD           # where run.sh was started: relative paths given as options are taken from here
cd "$(dirname "$0")"

stage=0
stop_stage=7
force=false            # redo stages even when their done-marker is there
nj=4                   # parallel jobs for data preparation
device=cpu             # cpu or cuda
conf_dir=conf          # directory of the stage configs; files missing there come from conf/ (conf/tiny: CI-sized)
corpus_dir=download    # directory holding LibriSpeech/ (or the LibriSpeech directory itself)
download=false         # download the parts with lhotse first (needs internet)
parts=                 # space-separated parts; empty = those in conf/data.yaml
nproc=1                # processes (GPUs) per node for training; > 1 runs torchrun
stage1_configs="stage1 stage1_labels_only stage1_frame_kl"   # stage 4: student and baselines
stage2_configs="stage2 stage2_labels_only"                   # stage 5: streaming student and baseline
teacher_model=         # a wav2vec 2.0 checkpoint: Hugging Face directory or fairseq .pt (default: conf/teacher.yaml)

help_message="Usage: $0 [options]   (DistillW2V2 on LibriSpeech)"
. utils/parse_options.sh
. ./path.sh
. utils/stage.sh

part_override=()
if [ -n "$parts" ]; then part_override=("parts=[$(echo $parts | tr ' ' ',')]"); fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "data" data/manifests "$(conf data)" "$corpus_dir" "$parts"; then
  python -m distill.bin.prepare_manifests --config "$(conf data)" \
    corpus_dir="$corpus_dir" out_dir=data/manifests nj="$nj" download="$download" "${part_override[@]}"
  stage_end
fi

. ../TEMPLATE/stages.sh   # stages 1-7, shared by every recipe

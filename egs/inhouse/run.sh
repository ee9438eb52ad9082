#!/usr/bin/env bash
# DistillW2V2 recipe for an in-house corpus given as Kaldi data directories; with no --corpus-dir it
# generates the synthetic demo corpus (local/make_demo_corpus.py) and runs on that.
#   ./run.sh --stage 0 --stop-stage 6
# Stages: 0 data (here) | 1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation
#         5 stage-2 (streaming) distillation | 6 decode + score | 7 export  (../TEMPLATE/stages.sh)
set -euo pipefail
run_dir=$PWD           # where run.sh was started: relative paths given as options are taken from here
cd "$(dirname "$0")"

stage=0
stop_stage=7
force=false            # redo stages even when their done-marker is there
nj=2                   # parallel jobs for data preparation
device=cpu             # cpu or cuda
conf_dir=conf          # directory of the stage configs; files missing there come from conf/ (conf/tiny: CI-sized)
corpus_dir=            # directory with Kaldi data dirs train/ dev/ test/; empty = demo corpus
demo_dir=download/demo # where the demo corpus is generated
demo_size=default      # demo corpus size: tiny, small or default
demo_seed=0            # seed of the demo corpus
nproc=1                # processes (GPUs) per node for training; > 1 runs torchrun
stage1_configs="stage1 stage1_labels_only"   # stage 4: student and its labels-only baseline; add stage1_frame_kl
                       # for the frame-level KL baseline (2.5 min more; its demo result: docs/status.md)
stage2_configs="stage2 stage2_labels_only"                   # stage 5: streaming student and baseline
teacher_init=pretrained  # pretrained: import the shipped demo teacher; scratch: train one on this corpus
                         # (conf/teacher_scratch.yaml, ~2 h on CPU; the shipped one: demo-teacher/README.md)

help_message="Usage: $0 [options]   (DistillW2V2 on Kaldi-format in-house data, or the demo corpus)"
. utils/parse_options.sh
. ./path.sh
. utils/stage.sh
case $teacher_init in pretrained|scratch) ;; *) echo "$0: --teacher-init must be pretrained or scratch" >&2; exit 1;; esac

if [ -z "$corpus_dir" ]; then
  corpus_dir=$demo_dir/kaldi
  if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "demo corpus" "$demo_dir" "$demo_size" "$demo_seed"; then
    python "$DISTILL_ROOT/local/make_demo_corpus.py" --out "$demo_dir" --size "$demo_size" --seed "$demo_seed" --nj "$nj"
    stage_end
  fi
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "data" data/manifests "$(conf data)" "$corpus_dir"; then
  python -m distill.bin.prepare_manifests --config "$(conf data)" \
    corpus_dir="$corpus_dir" out_dir=data/manifests nj="$nj"
  stage_end
fi

. ../TEMPLATE/stages.sh   # stages 1-7, shared by every recipe

#!/usr/bin/env bash
# DistillW2V2 recipe for an in-house corpus given as Kaldi data directories; with no --corpus-dir it
# generates the synthetic demo corpus (local/make_demo_corpus.py) and runs on that.
#   ./run.sh --stage 0 --stop-stage 6
# Stages: 0 data | 1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation
#         5 stage-2 (streaming) distillation | 6 decode + score
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=6
force=false            # redo stages even when their done-marker is there
nj=2                   # parallel jobs for data preparation
device=cpu             # cpu or cuda
conf_dir=conf          # directory of the stage configs (conf/tiny for a CI-sized run)
corpus_dir=            # directory with Kaldi data dirs train/ dev/ test/; empty = demo corpus
demo_dir=download/demo # where the demo corpus is generated
demo_size=default      # demo corpus size: tiny, small or default
demo_seed=0            # seed of the demo corpus

help_message="Usage: $0 [options]   (DistillW2V2 on Kaldi-format in-house data, or the demo corpus)"
. utils/parse_options.sh
. ./path.sh
. utils/stage.sh

if [ -z "$corpus_dir" ]; then
  corpus_dir=$demo_dir/kaldi
  if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "demo corpus" "$demo_dir" "$demo_size" "$demo_seed"; then
    python "$DISTILL_ROOT/local/make_demo_corpus.py" --out "$demo_dir" --size "$demo_size" --seed "$demo_seed" --nj "$nj"
    stage_end
  fi
fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "data" data/manifests "$conf_dir/data.yaml" "$corpus_dir"; then
  python -m distill.bin.prepare_manifests --config "$conf_dir/data.yaml" \
    corpus_dir="$corpus_dir" out_dir=data/manifests nj="$nj"
  stage_end
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ] && stage_begin 1 "lang" data/lang "$conf_dir/lang.yaml" data/manifests/.done.stage0; then
  python -m distill.bin.prepare_lang --config "$conf_dir/lang.yaml" manifest_dir=data/manifests lang_dir=data/lang
  stage_end
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then stage_unavailable 2 "denominator graph"; fi
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then stage_unavailable 3 "teacher"; fi
if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then stage_unavailable 4 "stage-1 distillation"; fi
if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then stage_unavailable 5 "stage-2 distillation"; fi
if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then stage_unavailable 6 "decode and score"; fi
log "done (stages $stage..$stop_stage)"

#!/usr/bin/env bash
# DistillW2V2 recipe for GigaSpeech.
#   ./run.sh --corpus-dir /data/GigaSpeech        (a release: GigaSpeech.json + audio/**.opus)
# Subsets (XS/S/M/L/XL, DEV, TEST) are set in conf/data.yaml (or --subsets "XS DEV TEST").
# Stages: 0 data | 1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation
#         5 stage-2 (streaming) distillation | 6 decode + score
set -euo pipefail
cd "$(dirname "$0")"

stage=0
stop_stage=6
force=false            # redo stages even when their done-marker is there
nj=4                   # parallel jobs for data preparation
device=cpu             # cpu or cuda
conf_dir=conf          # directory of the stage configs
corpus_dir=download/GigaSpeech   # the GigaSpeech release directory
subsets=               # space-separated subsets; empty = those in conf/data.yaml

help_message="Usage: $0 [options]   (DistillW2V2 on GigaSpeech)"
. utils/parse_options.sh
. ./path.sh
. utils/stage.sh

subset_override=()
if [ -n "$subsets" ]; then subset_override=("parts=[$(echo $subsets | tr ' ' ',')]"); fi

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ] && stage_begin 0 "data" data/manifests "$conf_dir/data.yaml" "$corpus_dir" "$subsets"; then
  python -m distill.bin.prepare_manifests --config "$conf_dir/data.yaml" \
    corpus_dir="$corpus_dir" out_dir=data/manifests nj="$nj" "${subset_override[@]}"
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

# Stages 1-7 of every DistillW2V2 recipe, written once. egs/<corpus>/run.sh declares its options, sources
# utils/parse_options.sh, path.sh and utils/stage.sh, runs its corpus-specific stage 0 (data/manifests),
# then sources this file:
#   1 lang | 2 denominator graph | 3 teacher | 4 stage-1 distillation | 5 stage-2 (streaming) distillation
#   6 decode + score | 7 export (ONNX, sherpa-onnx, tokens, HLG, model card: exp/export/<model>, docs/deploy.md)
# It reads the recipe's stage, stop_stage, nj, device, stage1_configs, stage2_configs, conf_dir (through
# `conf`) and nproc (through `launch`); and, where the recipe declares them, teacher_model (a checkpoint
# that replaces the teacher config's model.path) and teacher_init (pretrained: conf/teacher.yaml |
# scratch: conf/teacher_scratch.yaml, both written to exp/teacher). Each stage is one block: swap a step
# by editing its line, or give other configs (--conf-dir, --stage1-configs, --stage2-configs).

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ] && stage_begin 1 "lang" data/lang "$(conf lang)" data/manifests/.done.stage0; then
  python -m distill.bin.prepare_lang --config "$(conf lang)" manifest_dir=data/manifests lang_dir=data/lang
  stage_end
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && stage_begin 2 "denominator graph" data/lang "$(conf den)" data/lang/.done.stage1; then
  python -m distill.bin.build_den_graph --config "$(conf den)" lang_dir=data/lang
  stage_end
fi

teacher_conf=$(conf teacher)   # import a pretrained teacher and fine-tune it with LF-MMI
if [ "${teacher_init:-pretrained}" = scratch ]; then teacher_conf=$(conf teacher_scratch); fi   # or train it from scratch
teacher_args=()
if [ -n "${teacher_init+set}" ]; then teacher_args+=(exp_dir=exp/teacher); fi
if [ -n "${teacher_model:-}" ]; then teacher_args+=("model.path=$teacher_model"); fi
if [ $stage -le 3 ] && [ $stop_stage -ge 3 ] && stage_begin 3 "teacher" exp/teacher "$teacher_conf" data/lang/.done.stage2 ${teacher_model+"$teacher_model"}; then
  launch distill.bin.train --config "$teacher_conf" device="$device" "${teacher_args[@]}"
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

if [ $stage -le 7 ] && [ $stop_stage -ge 7 ]; then
  for m in stage1 stage2; do   # the student and the streaming student, as they ship
    if [ ! -f "exp/$m/model/config.json" ]; then log "Stage 7 (export): exp/$m/model not trained; skipped"; continue; fi
    export_args=()   # the HLG graph and the WERs of stage 6, when it ran
    if [ -f data/lang_test/HLG.fst ]; then export_args+=(--graph-dir data/lang_test); fi
    if [ -f exp/results.json ]; then export_args+=(--results exp/results.json); fi
    if stage_begin 7 "export: $m" "exp/export/$m" exp/$m/.done.stage[45] exp/decode/.done.stage6 "${export_args[*]}"; then
      python -m distill.bin.export --model "exp/$m/model" --lang-dir data/lang --out "exp/export/$m" \
        --name "distillw2v2-$m" "${export_args[@]}"
      stage_end
    fi
  done
fi
log "done (stages $stage..$stop_stage)"

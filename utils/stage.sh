# Stage bookkeeping for recipe run.sh scripts: timestamped logging, per-stage timing, done-markers.
#
#   if [ $stage -le 1 ] && [ $stop_stage -ge 1 ] && stage_begin 1 "lang" data/lang conf/lang.yaml; then
#     python -m distill.bin.prepare_lang --config conf/lang.yaml ...
#     stage_end
#   fi
#
# stage_begin N NAME OUTDIR [INPUT...] logs the start and returns 1 (skip) when OUTDIR holds the marker
# of an earlier successful run with the same inputs (file contents, with the files a YAML config inherits
# from, or the literal strings given) and $force is not true. stage_end writes the marker and logs the
# duration. Deleting OUTDIR, changing a config or one of its bases, or --force true makes the stage run again.
# Every line also goes to ${log_file:-exp/run.log}.

log() {
  local msg
  msg="$(date '+%Y-%m-%d %H:%M:%S') ($(basename "${BASH_SOURCE[1]:-$0}"):${BASH_LINENO[0]}) $*"
  echo "$msg" >&2
  local lf=${log_file:-exp/run.log}
  mkdir -p "$(dirname "$lf")" && echo "$msg" >> "$lf"
}

_stage_signature() {
  local x
  for x in "$@"; do
    if [ -f "$x" ]; then echo "file $x $(sha1sum < "$x" | cut -d' ' -f1)"; _stage_bases "$x"; else echo "arg $x"; fi
  done | sha1sum | cut -d' ' -f1
}

# _stage_bases FILE: for a YAML config that inherits (`base:`), a line per file of its base chain
# (python -m distill.config lists them), so that a change in a base re-runs the stage too
_stage_bases() {
  case $1 in *.yaml|*.yml) ;; *) return 0 ;; esac
  grep -q '^base:' "$1" || return 0
  local b
  python -m distill.config "$1" | while IFS= read -r b; do
    if [ "$b" != "$1" ]; then echo "base $b $(sha1sum < "$b" | cut -d' ' -f1)"; fi
  done
}

stage_begin() {
  _stage_n=$1; _stage_name=$2; _stage_dir=$3; shift 3
  _stage_sig=$(_stage_signature "$@")
  local marker="$_stage_dir/.done.stage$_stage_n"
  if [ "${force:-false}" != true ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$_stage_sig" ]; then
    log "Stage $_stage_n ($_stage_name): already done ($marker); skipped (use --force true to redo)"
    return 1
  fi
  rm -f "$marker"
  _stage_t0=$(date +%s)
  log "Stage $_stage_n ($_stage_name): started"
  return 0
}

stage_end() {
  mkdir -p "$_stage_dir"
  echo "$_stage_sig" > "$_stage_dir/.done.stage$_stage_n"
  local dt=$(( $(date +%s) - _stage_t0 ))
  log "Stage $_stage_n ($_stage_name): finished in $((dt / 60))m$((dt % 60))s"
}

stage_unavailable() {
  log "Stage $1 ($2) is not implemented yet in this version of distillw2v2; run with --stop-stage $(( $1 - 1 ))"
  exit 3
}

# launch MODULE ARGS...: `python -m MODULE ARGS...`, or under torchrun with $nproc processes on this
# node when nproc > 1 (several nodes: run torchrun yourself, see the README).
launch() {
  if [ "${nproc:-1}" -gt 1 ]; then
    torchrun --standalone --nproc-per-node "$nproc" -m "$@"
  else
    python -m "$@"
  fi
}

# conf NAME: the config file of a step, $conf_dir/NAME.yaml when that exists, else conf/NAME.yaml
# (so a small conf dir such as conf/tiny only holds the files it changes).
conf() {
  if [ -f "${conf_dir:-conf}/$1.yaml" ]; then echo "${conf_dir:-conf}/$1.yaml"; else echo "conf/$1.yaml"; fi
}

# Kaldi-style option parsing for recipe scripts, written for distillw2v2.
#
# Source it after the script's defaults are set:
#     stage=0
#     nj=4
#     use_gpu=false
#     . utils/parse_options.sh
#
# Semantics (as Kaldi's utils/parse_options.sh):
#   --foo-bar VALUE   sets the shell variable foo_bar (dashes become underscores); the variable must
#                     already be defined by the script, otherwise the option is invalid (exit 1).
#   a missing value   (the option is last, or is followed by another --option) is an error.
#   booleans          a variable whose default is true/false accepts only true or false.
#   --name=value      is rejected (use --name value).
#   --help | -h       prints $help_message (if the script set one) and every option the script declares,
#                     with its default, then exits 0.
# Parsing stops at the first argument that does not start with "--"; the rest stay in "$@".
#
# Path options: an option whose name ends in _dir, _file, _model or _path takes a path. A script that
# changes directory before sourcing this file (the recipes' run.sh `cd` into their own directory) sets
# run_dir=$PWD before its cd; a relative path given on the command line then means a path from run_dir,
# where the user started the script:
#   it exists there                      -> made absolute (run_dir/path);
#   it exists only in the script's dir   -> kept as given (its meaning before run_dir existed);
#   it exists in neither                 -> made absolute from run_dir, with a note on stderr naming the
#                                           given path and both places looked in.
# Defaults (paths the script itself sets) are never changed.

_po_script="${BASH_SOURCE[1]:-$0}"
# a script started by a relative path that has changed directory since: its path is from run_dir
if [ ! -e "$_po_script" ] && [ -n "${run_dir:-}" ]; then _po_script="$run_dir/$_po_script"; fi

_po_list_options() {
  # Variables assigned at the top level of the calling script before it sources this file.
  local line name
  while IFS= read -r line; do
    case "$line" in
      *parse_options.sh*) break ;;
    esac
    if [[ "$line" =~ ^([a-z_][a-z0-9_]*)= ]]; then
      name=${BASH_REMATCH[1]}
      [[ "$name" == help_message || "$name" == run_dir ]] && continue
      printf '  --%-22s %s\n' "${name//_/-}" "${!name-}"
    fi
  done < "$_po_script"
}

# Relative path options given on the command line: from the directory the script was started in.
_po_resolve_paths() {
  local name value abs
  if [ -z "${run_dir:-}" ] || [ "$run_dir" -ef "$PWD" ]; then return 0; fi
  for name in "${_po_given[@]}"; do
    case "$name" in *_dir|*_file|*_model|*_path) ;; *) continue ;; esac
    value=${!name}
    case "$value" in ""|/*) continue ;; esac
    abs="${run_dir%/}/${value#./}"
    if [ -e "$abs" ]; then
      printf -v "$name" '%s' "$abs"
    elif [ ! -e "$value" ]; then
      echo "$0: note: --${name//_/-} '$value' exists neither in $run_dir (where $0 was started)" \
        "nor in $PWD; taking it as $abs" >&2
      printf -v "$name" '%s' "$abs"
    fi   # else it exists only relative to the script's directory: kept as given
  done
}

_po_given=()
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then printf '%s\n\n' "$help_message"; fi
      echo "Options (default values):"
      _po_list_options
      exit 0 ;;
    --*=*)
      echo "$0: options take the form '--name value', not '$1'" >&2
      exit 1 ;;
    --?*)
      _po_name=${1#--}
      _po_name=${_po_name//-/_}
      if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_name+set}" ] || [ "$_po_name" = run_dir ]; then
        echo "$0: invalid option $1 (see --help)" >&2
        exit 1
      fi
      if [ $# -lt 2 ] || [[ "$2" == --* ]]; then
        echo "$0: option $1 needs a value" >&2
        exit 1
      fi
      _po_old=${!_po_name}
      if [ "$_po_old" = true ] || [ "$_po_old" = false ]; then
        if [ "$2" != true ] && [ "$2" != false ]; then
          echo "$0: option $1 takes true or false, not '$2'" >&2
          exit 1
        fi
      fi
      printf -v "$_po_name" '%s' "$2"
      _po_given+=("$_po_name")
      shift 2 ;;
    *) break ;;
  esac
done
_po_resolve_paths
unset _po_name _po_old _po_given
true

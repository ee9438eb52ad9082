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

_po_script="${BASH_SOURCE[1]:-$0}"

_po_list_options() {
  # Variables assigned at the top level of the calling script before it sources this file.
  local line name
  while IFS= read -r line; do
    case "$line" in
      *parse_options.sh*) break ;;
    esac
    if [[ "$line" =~ ^([a-z_][a-z0-9_]*)= ]]; then
      name=${BASH_REMATCH[1]}
      [[ "$name" == help_message ]] && continue
      printf '  --%-22s %s\n' "${name//_/-}" "${!name-}"
    fi
  done < "$_po_script"
}

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
      if ! [[ "$_po_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!_po_name+set}" ]; then
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
      shift 2 ;;
    *) break ;;
  esac
done
unset _po_name _po_old
true

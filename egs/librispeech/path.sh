# Recipe environment: the project's Python env (see utils/path.sh). Add recipe-specific paths below.
. "$(dirname "${BASH_SOURCE[0]}")/../../utils/path.sh"

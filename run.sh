#!/usr/bin/env bash
# The main job: the DistillW2V2 pipeline (stages 0-6) of egs/inhouse on the generated demo corpus.
# Options pass through to egs/inhouse/run.sh, e.g.  ./run.sh --stage 0 --stop-stage 6 --nj 2
exec "$(dirname "$0")/egs/inhouse/run.sh" "$@"

#!/usr/bin/env bash
# The Scientific recipe end to end (docs/RESULTS.md): data -> SIDs -> model -> tasks -> SFT -> GRPO -> eval.
#   bash scripts/scientific.sh gpu            # one GPU (bf16, preset `base`)
#   bash scripts/scientific.sh cpu            # CPU variant (preset `rec`, sequence rows, every test user, non-thinking)
#   bash scripts/scientific.sh gpu sft eval   # only some steps (data ids model tasks sft grpo eval)
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: scientific.sh gpu|cpu [steps...]}; shift
steps=${*:-data ids model tasks sft grpo eval}
r=recipes/scientific
run() { echo "== $*" >&2; python -m onereason.cli "$@"; }
for step in $steps; do
  case $step in
    data)  run build-data --config $r/data.yaml ;;
    ids)   run build-ids --config $r/ids.yaml ;;
    model) run init-model --config $r/model_$variant.yaml ;;
    tasks) run build-tasks --config $r/tasks.yaml ;;
    sft)   run train --config $r/sft_$variant.yaml ;;
    grpo)  run train --config $r/grpo_$variant.yaml ;;
    eval)  models=(runs/scientific/models/sft-$variant)
           [ -d runs/scientific/models/grpo-$variant ] && models+=(runs/scientific/models/grpo-$variant)
           run eval --config $r/eval.yaml --models "${models[@]}" --out_dir runs/scientific/eval-$variant \
             $( [ "$variant" = cpu ] && echo --compare false --modes no_think ) ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done

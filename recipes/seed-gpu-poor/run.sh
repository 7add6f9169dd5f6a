#!/usr/bin/env bash
# The seed blog's "GPU poor" reward-model workflow, step by step, with bonsynth (run from the repository root):
#
#   bash recipes/seed-gpu-poor/run.sh
#
# Hub ids (gpt2, ChaiML/..., Anthropic/hh-rlhf) need network access: the first run downloads them.
# Offline, point the variables at local files instead, e.g.
#   BASE=demo:smollm2 THUMBS=data/feedback.jsonl PAIRS=data/pairs.jsonl \
#   HH=../shared/data/hh-rlhf-harmless-base-1500.jsonl bash recipes/seed-gpu-poor/run.sh
# (data/feedback.jsonl and data/pairs.jsonl are the repository's small samples in the same two shapes; for
# `demo:smollm2` keep LAYERS=0:8 or pick your own range). Every output directory lands in the current folder;
# the merge YAMLs beside this script refer to them by these names.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

BASE="${BASE:-gpt2}"                 # hub id or local folder of the model to slice
LAYERS="${LAYERS:-0:8}"              # the seed keeps gpt2's first 8 of 12 layers (~2/3 of the depth)
# The Chai datasets: the two ChaiML ids below are PLACEHOLDERS (the exact ids were not checked from an offline
# machine): set THUMBS / PAIRS to the ids as published on the hub, or to local files. Each row must be a
# bonsynth binary row (text + 0/1 label, like data/feedback.jsonl) or a pair (prompt/chosen/rejected).
THUMBS="${THUMBS:-ChaiML/thumbs_up_dataset}"          # thumbs up/down of single replies -> binary objective
PAIRS="${PAIRS:-ChaiML/feedback_pairs_dataset}"       # chosen/rejected reply pairs -> pairwise objective
HH="${HH:-Anthropic/hh-rlhf}"                          # hh-rlhf chosen/rejected pairs -> pairwise objective
TRAIN_OPTS=(--epochs "${EPOCHS:-1}" --max-length "${MAX_LENGTH:-512}" --batch-size "${BATCH_SIZE:-8}")

# 1. Slice: keep layers 0..7 of the base (a mergekit passthrough merge; same as recipes/gpt2-small-slice.yaml).
#    The result is a plain LM without a reward head: the shared starting point of all three RMs, and the
#    base_model the TIES merge subtracts to get each RM's task vector.
bonsynth rm slice --base "$BASE" --layers "$LAYERS" --out gpt2-8l

# 2. A thumbs-up RM: binary objective (2-label classifier; its reward is logit1 - logit0).
bonsynth rm train --base gpt2-8l --data "$THUMBS" --objective binary --out rm-thumbs "${TRAIN_OPTS[@]}"

# 3. A feedback-pairs RM: pairwise (Bradley-Terry) objective, 1-label head.
bonsynth rm train --base gpt2-8l --data "$PAIRS" --objective pairwise --out rm-feedback-pairs "${TRAIN_OPTS[@]}"

# 4. An hh-rlhf RM: pairwise; --skip-invalid drops (and reports) rows with an empty reply instead of failing.
bonsynth rm train --base gpt2-8l --data "$HH" --objective pairwise --out rm-hh-rlhf --skip-invalid \
    "${TRAIN_OPTS[@]}"

# 5. Merge: the seed's rewardblend (TIES, density 1, weights 0.5 / 0.6 / 0.05), plus two variants.
bonsynth merge "$HERE/rewardblend-ties.yaml" rewardblend
bonsynth merge "$HERE/rewardblend-linear.yaml" rewardblend-linear
bonsynth merge "$HERE/rewardblend-dare-ties.yaml" rewardblend-dare --random-seed 0

# 6. Check: the merged RM on each task's data (use held-out files you did not train on; see
#    benchmarks/bench_seed_workflow.py, which makes the splits and applies the seed's 2-point criterion).
for model in rm-thumbs rm-feedback-pairs rm-hh-rlhf rewardblend rewardblend-linear rewardblend-dare; do
    bonsynth rm eval --model "$model" --data "$THUMBS" --data "$PAIRS" --data "$HH" --skip-invalid --json
done

#!/usr/bin/env bash
# Train the tiny preset's LLM side with NExT-GPT's three stages, on top of the shipped tiny
# encoder and decoders (scripts/train_tiny.sh), then ship the result into anygpt/weights/tiny/model.
#
#   scripts/train_tiny_llm.sh [WORKDIR]     # default WORKDIR: data/tiny (reuses its toy-train set)
#
# SmolLM2-135M on a 2-core CPU: about 2 s a step for stage 1, 3 s for stage 2, 6 s for stage 3.
# Each stage resumes from its checkpoint when re-run.
set -euo pipefail
W=${1:-data/tiny}
PY=${PY:-python3}
CLI="$PY -m apps.cli"
DATA=$W/toy-train
RUNS=$W/runs
[ -f "$DATA/dialogs.jsonl" ] || $CLI toyworld "$DATA" --counts image=3000,audio=1500,video=1500,depth=800 --seed 0 --dialogs 4000 --two-outputs 0.4
$CLI train stage1 --data "$DATA/manifest.jsonl" --out "$RUNS/stage1" --steps ${STAGE1_STEPS:-150} --batch-size 8 --lr 1e-3
$CLI train stage2 --data "$DATA/manifest.jsonl" --init "$RUNS/stage1/model" --out "$RUNS/stage2" --steps ${STAGE2_STEPS:-200} --batch-size 8 --lr 1e-3
$CLI train stage3 --data "$DATA/dialogs.jsonl" --init "$RUNS/stage2/model" --out "$RUNS/stage3" --steps ${STAGE3_STEPS:-300} --batch-size 8 --lr 5e-4
# The output projectors, refit on cached LLM states against the decoders (cannot collapse; README)
# (the audio and video projectors are rebuilt for their decoders' 1x384 and 16x384; each modality its own setting)
# (--reads reply: each projector reads the reply's words up to its run as well as the signal tokens; README)
# (README: "Each run after its sentence" for the settings and the minutes they took)
AUD_PROJ="--dialogs $DATA/dialogs.jsonl --manifest $DATA/manifest.jsonl --per-modality 1000 --seed 0 --reads reply --modalities audio --decoder audio=anygpt:tiny/audio --contrastive-weight 0.1 --steps 3000"
IMG_PROJ="--dialogs $DATA/dialogs.jsonl --manifest $DATA/manifest.jsonl --per-modality 300 --seed 0 --reads reply --modalities image --decoder image=anygpt:tiny/image --contrastive-weight 1.0 --steps 5000"
VID_PROJ="--dialogs $DATA/dialogs.jsonl --manifest $DATA/manifest.jsonl --per-modality 300 --seed 0 --reads reply --modalities video --decoder video=anygpt:tiny/video --contrastive-weight 1.0 --steps 5000"
$CLI train projectors --init "$RUNS/stage3/model" --out "$RUNS/projectors-audio" $AUD_PROJ
$CLI train projectors --init "$RUNS/projectors-audio/model" --out "$RUNS/projectors-image" $IMG_PROJ
$CLI train projectors --init "$RUNS/projectors-image/model" --out "$RUNS/projectors" $VID_PROJ
$CLI train export-tiny model --source "$RUNS/projectors/model" --data "$DATA" \
  --command "anygpt toyworld $DATA --counts image=3000,audio=1500,video=1500,depth=800 --seed 0 --dialogs 4000 --two-outputs 0.4" \
  --command "anygpt train stage1 --data $DATA/manifest.jsonl --out $RUNS/stage1 --steps ${STAGE1_STEPS:-150} --batch-size 8 --lr 1e-3" \
  --command "anygpt train stage2 --data $DATA/manifest.jsonl --init $RUNS/stage1/model --out $RUNS/stage2 --steps ${STAGE2_STEPS:-200} --batch-size 8 --lr 1e-3" \
  --command "anygpt train stage3 --data $DATA/dialogs.jsonl --init $RUNS/stage2/model --out $RUNS/stage3 --steps ${STAGE3_STEPS:-300} --batch-size 8 --lr 5e-4" \
  --command "anygpt train projectors --init $RUNS/stage3/model --out $RUNS/projectors-audio $AUD_PROJ" \
  --command "anygpt train projectors --init $RUNS/projectors-audio/model --out $RUNS/projectors-image $IMG_PROJ" \
  --command "anygpt train projectors --init $RUNS/projectors-image/model --out $RUNS/projectors $VID_PROJ"
$CLI eval --preset tiny --part llm --json

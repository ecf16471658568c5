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
MAKE_DATA="anygpt toyworld $DATA --counts image=3000,audio=1500,video=1500,depth=800 --seed 0 --dialogs 4000 --two-outputs 0.4"
S1="anygpt train stage1 --data $DATA/manifest.jsonl --out $RUNS/stage1 --steps ${STAGE1_STEPS:-150} --batch-size 8 --lr 1e-3"
S2="anygpt train stage2 --data $DATA/manifest.jsonl --init $RUNS/stage1/model --out $RUNS/stage2 --steps ${STAGE2_STEPS:-200} --batch-size 8 --lr 1e-3"
S3="anygpt train stage3 --data $DATA/dialogs.jsonl --init $RUNS/stage2/model --out $RUNS/stage3 --steps ${STAGE3_STEPS:-300} --batch-size 8 --lr 5e-4"
# The output projectors, refit on cached LLM states against the decoders (cannot collapse; README)
# (--reads reply: each projector reads the reply's words up to its run as well as the signal tokens; README)
# (README: "Each run after its sentence" for the settings and the minutes they took)
COMMON="--dialogs $DATA/dialogs.jsonl --manifest $DATA/manifest.jsonl --seed 0 --reads reply"
P_AUD="anygpt train projectors --init $RUNS/stage3/model --out $RUNS/projectors-audio $COMMON --per-modality 1000 --modalities audio --decoder audio=anygpt:tiny/audio --contrastive-weight 0.1 --steps 3000"
P_IMG="anygpt train projectors --init $RUNS/projectors-audio/model --out $RUNS/projectors-image $COMMON --per-modality 300 --modalities image --decoder image=anygpt:tiny/image --contrastive-weight 1.0 --steps 5000"
# (the video projector starts anew and fits with dropout: README, "Dropout in the projector's fit")
P_VID="anygpt train projectors --init $RUNS/projectors-image/model --out $RUNS/projectors $COMMON --per-modality 300 --modalities video --decoder video=anygpt:tiny/video --contrastive-weight 1.0 --steps 5000 --fresh --heldout-fraction 0 --dropout 0.1"
# Stage 1 again, on the dialogs' questions about attached media (input projector alone; README,
# "Reading media after stage 3")
Q1="anygpt train stage1 --data $DATA/dialogs.jsonl --init $RUNS/projectors/model --out $RUNS/stage1q --steps 400 --batch-size 8 --lr 5e-4"
# The sound projector rebuilt to write MiniLM token states and pool them as the decoder does (README,
# "A pooled sound conditioning"); it reads the LLM states the first audio refit cached
P_POOL="anygpt train projectors --init $RUNS/stage1q/model --out $RUNS/projectors-pooled $COMMON --per-modality 1000 --modalities audio --decoder audio=anygpt:tiny/audio --contrastive-weight 0.1 --steps 3000 --heldout-fraction 0 --pooled-tokens 16"
# Stage 1 once more, the dialogs' questions plus sounds of kinds the world lacks at both lengths, grey
# clips and world sounds cut short (README, "Sounds the world does not have, read by the LLM"), twice
Q2="anygpt train stage1 --data $DATA/dialogs.jsonl --init $RUNS/projectors-pooled/model --out $RUNS/stage1x --steps 300 --batch-size 8 --lr 1e-3 --novel-audio 600 --grey-clips 400 --cut-sounds 400"
Q3="anygpt train stage1 --data $DATA/dialogs.jsonl --init $RUNS/stage1x/model --out $RUNS/stage1x2 --steps 300 --batch-size 8 --lr 5e-4 --seed 1 --novel-audio 600 --grey-clips 400 --cut-sounds 400"
# The sound projector refit once more, also on text-only requests for sounds the world lacks at both
# lengths and on requests whose reply repeats the request's words (README, "Replies that repeat the
# request"); it reads the same cached states as P_POOL
P_ECHO="anygpt train projectors --init $RUNS/stage1x2/model --out $RUNS/projectors-echo $COMMON --per-modality 1000 --modalities audio --decoder audio=anygpt:tiny/audio --contrastive-weight 0.1 --steps 3000 --heldout-fraction 0 --pooled-tokens 16 --novel-audio 600 --novel-kinds recipe --echo-audio 600"
# Stage 1 once more, against the encoder whose new audio tower reads a sound's length (README, "The
# new audio tower, read by the LLM"); only the input projector changes
Q4="anygpt train stage1 --data $DATA/dialogs.jsonl --init $RUNS/projectors-echo/model --out $RUNS/stage1p --steps 300 --batch-size 8 --lr 5e-4 --seed 2 --novel-audio 600 --grey-clips 400 --cut-sounds 400"
# Stage 3 anew on dialogs whose answers about sounds say their length, each clip read with its grey
# copy as a further token (README, "A sound's tail and a clip's grey copy as more tokens"), each sound
# with its head and its tail's loudness, world sounds drawn out past the long class (README, "A
# sound's head, and sounds past either length") and novel sounds that tell their length in the
# loudness tail alone (README, "Which token the length is read from"); then the three output
# projectors refit on its states
DATA_L=$W/toy-train-lengths
MAKE_DATA_L="anygpt toyworld $DATA_L --counts image=3000,audio=1500,video=1500,depth=800 --seed 0 --dialogs 4000 --two-outputs 0.4 --kinds-say-length"
S3V="anygpt train stage3 --data $DATA_L/dialogs.jsonl --init $RUNS/stage1p/model --out $RUNS/stage3m --steps 300 --batch-size 8 --lr 5e-4 --seed 3 --any-lengths --novel-audio 1200 --novel-kinds recipe --grey-clips 400 --cut-sounds 400 --novel-kinds-unlearnt --video-grey --audio-windows 0:0.9 --audio-loudness 1.5: --stretched-sounds 400 --length-from-loudness"
COMMON_L="--dialogs $DATA_L/dialogs.jsonl --manifest $DATA_L/manifest.jsonl --seed 0 --reads reply"
P_AUD_V="anygpt train projectors --init $RUNS/stage3m/model --out $RUNS/projectors-m-audio $COMMON_L --per-modality 1000 --modalities audio --decoder audio=anygpt:tiny/audio --contrastive-weight 0.1 --steps 3000 --heldout-fraction 0 --pooled-tokens 16 --novel-audio 600 --novel-kinds recipe --echo-audio 600"
P_IMG_V="anygpt train projectors --init $RUNS/projectors-m-audio/model --out $RUNS/projectors-m-image $COMMON_L --per-modality 300 --modalities image --decoder image=anygpt:tiny/image --contrastive-weight 1.0 --steps 5000"
P_VID_V="anygpt train projectors --init $RUNS/projectors-m-image/model --out $RUNS/projectors-m $COMMON_L --per-modality 300 --modalities video --decoder video=anygpt:tiny/video --contrastive-weight 1.0 --steps 5000 --fresh --heldout-fraction 0 --dropout 0.1"

[ -f "$DATA/dialogs.jsonl" ] || ${MAKE_DATA/anygpt /$CLI }
for cmd in "$S1" "$S2" "$S3" "$P_AUD" "$P_IMG" "$P_VID" "$Q1"; do ${cmd/anygpt /$CLI }; done
mkdir -p "$RUNS/projectors-pooled"
cp -n "$RUNS/projectors-audio/states-audio.safetensors" "$RUNS/projectors-pooled/"
${P_POOL/anygpt /$CLI }
for cmd in "$Q2" "$Q3"; do ${cmd/anygpt /$CLI }; done
mkdir -p "$RUNS/projectors-echo"
cp -n "$RUNS/projectors-audio/states-audio.safetensors" "$RUNS/projectors-echo/"
${P_ECHO/anygpt /$CLI }
${Q4/anygpt /$CLI }
[ -f "$DATA_L/dialogs.jsonl" ] || ${MAKE_DATA_L/anygpt /$CLI }
for cmd in "$S3V" "$P_AUD_V" "$P_IMG_V" "$P_VID_V"; do ${cmd/anygpt /$CLI }; done
args=()
for cmd in "$MAKE_DATA" "$S1" "$S2" "$S3" "$P_AUD" "$P_IMG" "$P_VID" "$Q1" "$P_POOL" "$Q2" "$Q3" "$P_ECHO" "$Q4" \
           "$MAKE_DATA_L" "$S3V" "$P_AUD_V" "$P_IMG_V" "$P_VID_V"; do args+=(--command "$cmd"); done
$CLI train export-tiny model --source "$RUNS/projectors-m/model" --data "$DATA_L" "${args[@]}"
$CLI eval --preset tiny --part llm --json

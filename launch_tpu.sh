#!/usr/bin/env bash
# Runs SpacTor-T5 pre-training on a Cloud TPU VM or pod slice with t5x (docs/t5x.md).
#
# For each τ: stage 1 (SpacTor: generator + RTD + span corruption) trains to step τ under `python -m t5x.train`;
# stage 2 (span corruption only) restores the stage-1 checkpoint at step τ without the generator and RTD head
# and trains to the total number of steps. `--sweep-tau` runs one such experiment per τ, each in its own dirs:
#   BUCKET/EXPERIMENT/tau<τ>/stage1   BUCKET/EXPERIMENT/tau<τ>/stage2
# τ = 0 (or --baseline) is the SC baseline the sweep is compared with: span corruption for all the steps
# (gin/t5x/runs/sc_baseline.gin) in BUCKET/EXPERIMENT/sc_baseline.
# Re-running the same command resumes: t5x restores the latest checkpoint in each model dir.
set -euo pipefail

PROG=$(basename "$0")
T5X_GIT=(git+https://github.com/google-research/t5x git+https://github.com/google/airio
         git+https://github.com/google-research/jestimator)
# What t5x, airio and jestimator need besides the project's own requirements. They are installed with --no-deps
# because their setup.py files pin packages that conflict with the project's (docs/t5x.md).
T5X_DEPS=(clu fiddle chex jaxtyping cached_property tensorstore grain "tensorboard>=2.21,<2.22")

usage() {
  cat <<EOF
Usage: $PROG --project P --zone Z --accelerator-type T --bucket gs://B (--repo-url URL | --tarball FILE) [options]

Creates (or reuses) a Cloud TPU VM / pod slice, installs spactor with t5x on every worker and runs the two
SpacTor stages with \`python -m t5x.train\` on all workers at once (--worker=all). τ = 0 runs the SC baseline.

Required:
  --project ID            Google Cloud project.
  --zone ZONE             TPU zone, e.g. us-central2-b.
  --accelerator-type T    TPU type, e.g. v4-8 (one host) or v4-64 (a pod slice, 8 hosts).
  --bucket gs://B[/path]  Output bucket; model dirs go to BUCKET/EXPERIMENT/tau<τ>/stage{1,2}.
  --repo-url URL          Git URL the workers clone the project from (with --branch), or
  --tarball FILE          a source tarball copied to every worker (make one: git archive -o spactor.tar.gz HEAD).

Experiment:
  --model-size S          tiny, small, base or large (T5.1.0 shapes, paper Table 5). Default: base.
  --tau N                 Stage-1 steps τ (integer, 0 <= τ < total steps; 0 = the SC baseline). Default: 120000.
  --sweep-tau N1,N2,...   One experiment per τ (overrides --tau), e.g. 0,60000,120000,250000.
  --baseline              Also run the SC baseline (τ = 0: span corruption for all the steps, in
                          BUCKET/EXPERIMENT/sc_baseline), first; the same as a 0 in --sweep-tau.
  --total-steps N         Total steps of stage 1 + stage 2. Default: 1000000.
  --lambda1 X             Weight λ1 of the RTD loss. Default: 10.
  --lambda2 X             Weight λ2 of the span-corruption loss in stage 1 (stage 2 trains on λ2·L_SC, keeping
                          the SC term's scale across τ: gin/t5x/runs/spactor_stage2.gin). Default: 10.
  --mlm-ratio X           Fraction of the remaining tokens masked for the generator, in (0, 1).
                          Default: 0.2 for large, 0.15 otherwise (paper Table 5).
  --corpus NAME           Task corpus: tasks spactor_hybrid_NAME and spactor_sc_NAME (the model takes their
                          vocabulary: T5's for c4, the embedded one for sotu). Default: c4.
  --batch-size N          Global batch size. Default: 2048.
  --experiment NAME       Directory name under the bucket. Default: spactor-<model size>.
  --tfds-data-dir gs://D  Where the TFDS datasets (c4/en) are prepared; passed to t5x.train.
  --gin NAME=VALUE        Extra gin binding for every t5x.train run (repeatable, passed as --gin.NAME=VALUE),
                          e.g. --gin PjitPartitioner.num_partitions=2

TPU VM:
  --tpu-name NAME         TPU VM name; reused when it exists. Default: spactor-<accelerator type>.
  --runtime-version V     TPU software version. Default: chosen from the accelerator type.
  --spot                  Create the TPU as a Spot VM.
  --branch B              Branch or tag to clone with --repo-url. Default: main.
  --skip-install          Do not (re)install the project on the workers.

Behaviour:
  --detach                Run all stages of all experiments in the background on the workers (nohup; log in
                          ~/spactor-logs/EXPERIMENT.log) and return; without it each stage runs in the foreground.
  --dry-run               Print every command instead of running it; gcloud is never called.
  -h, --help              Show this help.
EOF
}

die() { echo "$PROG: error: $*" >&2; echo "Run '$PROG --help' for the options." >&2; exit 2; }

# Shell-quotes one word so that bash reads it back unchanged; nests (quoting an already quoted command works).
q() {
  local s=$1
  if [[ $s =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s != *"'"* ]]; then
    printf "'%s'" "$s"
  else
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//\$/\\\$}; s=${s//\`/\\\`}
    printf '"%s"' "$s"
  fi
}
join_quoted() { local out=() a; for a in "$@"; do out+=("$(q "$a")"); done; echo "${out[*]}"; }

DRY_RUN=0
run() {  # prints (dry run) or runs one command
  if (( DRY_RUN )); then join_quoted "$@"; else echo "+ $(join_quoted "$@")" >&2; "$@"; fi
}

PROJECT= ZONE= ACCEL= BUCKET= REPO_URL= TARBALL= BRANCH=main TPU_NAME= RUNTIME= SPOT=0 SKIP_INSTALL=0 DETACH=0
BASELINE=0
MODEL_SIZE=base TAU=120000 SWEEP= TOTAL_STEPS=1000000 LAMBDA1=10 LAMBDA2=10 MLM_RATIO= CORPUS=c4 BATCH_SIZE=2048
EXPERIMENT= TFDS_DATA_DIR=
EXTRA_GIN=()

while (( $# )); do
  opt=$1
  case $opt in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --spot) SPOT=1; shift; continue ;;
    --skip-install) SKIP_INSTALL=1; shift; continue ;;
    --detach) DETACH=1; shift; continue ;;
    --baseline) BASELINE=1; shift; continue ;;
  esac
  if [[ $opt == --*=* ]]; then val=${opt#*=}; opt=${opt%%=*}; shift
  else
    [[ $opt == --* ]] || die "unexpected argument '$opt'"
    (( $# >= 2 )) || die "option $opt needs a value"
    val=$2; shift 2
  fi
  case $opt in
    --project) PROJECT=$val ;;
    --zone) ZONE=$val ;;
    --accelerator-type) ACCEL=$val ;;
    --bucket) BUCKET=${val%/} ;;
    --repo-url) REPO_URL=$val ;;
    --tarball) TARBALL=$val ;;
    --branch) BRANCH=$val ;;
    --tpu-name) TPU_NAME=$val ;;
    --runtime-version) RUNTIME=$val ;;
    --model-size) MODEL_SIZE=$val ;;
    --tau) TAU=$val ;;
    --sweep-tau) SWEEP=$val ;;
    --total-steps) TOTAL_STEPS=$val ;;
    --lambda1) LAMBDA1=$val ;;
    --lambda2) LAMBDA2=$val ;;
    --mlm-ratio) MLM_RATIO=$val ;;
    --corpus) CORPUS=$val ;;
    --batch-size) BATCH_SIZE=$val ;;
    --experiment) EXPERIMENT=$val ;;
    --tfds-data-dir) TFDS_DATA_DIR=${val%/} ;;
    --gin) [[ $val == *=* ]] || die "--gin takes NAME=VALUE, got '$val'"; EXTRA_GIN+=("$val") ;;
    *) die "unknown option '$opt'" ;;
  esac
done

# ---- validation ---------------------------------------------------------------------------------------------
missing=()
[[ -n $PROJECT ]] || missing+=(--project)
[[ -n $ZONE ]] || missing+=(--zone)
[[ -n $ACCEL ]] || missing+=(--accelerator-type)
[[ -n $BUCKET ]] || missing+=(--bucket)
[[ -n $REPO_URL || -n $TARBALL ]] || missing+=("--repo-url or --tarball")
(( ${#missing[@]} == 0 )) || die "missing required option(s): $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"
[[ -z $REPO_URL || -z $TARBALL ]] || die "give either --repo-url or --tarball, not both"
[[ -z $TARBALL || -f $TARBALL || $DRY_RUN == 1 ]] || die "--tarball: no such file '$TARBALL'"
[[ $BUCKET == gs://?* ]] || die "--bucket must be a gs:// path, got '$BUCKET'"
[[ -z $TFDS_DATA_DIR || $TFDS_DATA_DIR == gs://?* ]] || die "--tfds-data-dir must be a gs:// path"
case $MODEL_SIZE in tiny|small|base|large) ;; *) die "--model-size must be tiny, small, base or large, got '$MODEL_SIZE'" ;; esac
[[ $CORPUS =~ ^[a-z0-9_]+$ ]] || die "--corpus must be a task suffix such as c4, got '$CORPUS'"

is_uint() { [[ $1 =~ ^[0-9]+$ ]] && (( 10#$1 > 0 )); }
is_number() { [[ $1 =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }
is_uint "$TOTAL_STEPS" || die "--total-steps must be a positive integer, got '$TOTAL_STEPS'"
is_uint "$BATCH_SIZE" || die "--batch-size must be a positive integer, got '$BATCH_SIZE'"
is_number "$LAMBDA1" || die "--lambda1 must be a non-negative number, got '$LAMBDA1'"
is_number "$LAMBDA2" || die "--lambda2 must be a non-negative number, got '$LAMBDA2'"
[[ -n $MLM_RATIO ]] || { if [[ $MODEL_SIZE == large ]]; then MLM_RATIO=0.2; else MLM_RATIO=0.15; fi; }
is_number "$MLM_RATIO" && awk -v x="$MLM_RATIO" 'BEGIN { exit !(x > 0 && x < 1) }' \
  || die "--mlm-ratio must be a number in (0, 1), got '$MLM_RATIO'"

if [[ -n $SWEEP ]]; then IFS=, read -r -a TAUS <<< "$SWEEP"; else TAUS=("$TAU"); fi
(( ${#TAUS[@]} > 0 )) || die "--sweep-tau needs at least one value"
declare -A seen=()
for i in "${!TAUS[@]}"; do
  t=${TAUS[$i]}
  [[ $t =~ ^[0-9]+$ ]] || die "τ must be a non-negative integer (0 = the SC baseline), got '$t'"
  t=$((10#$t)); TAUS[$i]=$t
  (( t < 10#$TOTAL_STEPS )) || die "τ=$t must be less than --total-steps=$TOTAL_STEPS"
  [[ -z ${seen[$t]:-} ]] || die "τ=$t given twice in --sweep-tau"
  seen[$t]=1
done
(( ! BASELINE )) || [[ -n ${seen[0]:-} ]] || TAUS=(0 "${TAUS[@]}")
TOTAL_STEPS=$((10#$TOTAL_STEPS))

[[ -n $TPU_NAME ]] || TPU_NAME="spactor-${ACCEL}"
[[ -n $EXPERIMENT ]] || EXPERIMENT="spactor-${MODEL_SIZE}"
if [[ -z $RUNTIME ]]; then
  case $ACCEL in
    v5litepod-*|v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
    v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
    v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
    *) RUNTIME=tpu-ubuntu2204-base ;;
  esac
fi

GCLOUD_LOC=(--zone="$ZONE" --project="$PROJECT")
ssh_all() { run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_LOC[@]}" --worker=all --command="$1"; }

# ---- the t5x.train command lines ----------------------------------------------------------------------------
exp_dir() { echo "$BUCKET/$EXPERIMENT/tau$1"; }
baseline_dir() { echo "$BUCKET/$EXPERIMENT/sc_baseline"; }
common_flags() {
  local flags=(--gin.BATCH_SIZE="$BATCH_SIZE")
  [[ -z $TFDS_DATA_DIR ]] || flags+=(--tfds_data_dir="$TFDS_DATA_DIR")
  local g; for g in "${EXTRA_GIN[@]}"; do flags+=("--gin.$g"); done
  echo "$(join_quoted "${flags[@]}")"
}
stage1_cmd() {  # τ
  echo "python3 -m t5x.train $(join_quoted \
    --gin_file="gin/t5x/models/t5_1_0_${MODEL_SIZE}_spactor.gin" \
    --gin_file=gin/t5x/runs/spactor_stage1.gin \
    --gin.MODEL_DIR="'$(exp_dir "$1")/stage1'" \
    --gin.MIXTURE_OR_TASK_NAME="'spactor_hybrid_${CORPUS}'" \
    --gin.TAU="$1" \
    --gin.LAMBDA1="$LAMBDA1" \
    --gin.LAMBDA2="$LAMBDA2" \
    --gin.MLM_RATIO="$MLM_RATIO") $(common_flags)"
}
stage2_cmd() {  # τ
  echo "python3 -m t5x.train $(join_quoted \
    --gin_file="gin/t5x/models/t5_1_0_${MODEL_SIZE}.gin" \
    --gin_file=gin/t5x/runs/spactor_stage2.gin \
    --gin.MODEL_DIR="'$(exp_dir "$1")/stage2'" \
    --gin.MIXTURE_OR_TASK_NAME="'spactor_sc_${CORPUS}'" \
    --gin.TRAIN_STEPS="$TOTAL_STEPS" \
    --gin.TAU="$1" \
    --gin.STAGE1_DIR="'$(exp_dir "$1")/stage1'" \
    --gin.LAMBDA2="$LAMBDA2") $(common_flags)"
}
baseline_cmd() {
  echo "python3 -m t5x.train $(join_quoted \
    --gin_file="gin/t5x/models/t5_1_0_${MODEL_SIZE}.gin" \
    --gin_file=gin/t5x/runs/sc_baseline.gin \
    --gin.MODEL_DIR="'$(baseline_dir)'" \
    --gin.MIXTURE_OR_TASK_NAME="'spactor_sc_${CORPUS}'" \
    --gin.TRAIN_STEPS="$TOTAL_STEPS" \
    --gin.LAMBDA2="$LAMBDA2") $(common_flags)"
}
runs_of() {  # τ: the t5x.train command lines of its experiment, one a line
  if (( $1 == 0 )); then baseline_cmd; else stage1_cmd "$1"; stage2_cmd "$1"; fi
}

# ---- 1. TPU VM ----------------------------------------------------------------------------------------------
create=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_LOC[@]}" --accelerator-type="$ACCEL"
        --version="$RUNTIME")
(( SPOT )) && create+=(--spot)
if (( DRY_RUN )); then
  echo "# TPU VM: reuse it if it exists, create it otherwise"
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_LOC[@]}"
  echo "# only when the describe above fails:"
  run "${create[@]}"
elif gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_LOC[@]}" > /dev/null 2>&1; then
  echo "$PROG: reusing TPU VM $TPU_NAME" >&2
else
  run "${create[@]}"
fi

# ---- 2. install on every worker -----------------------------------------------------------------------------
if (( ! SKIP_INSTALL )); then
  (( DRY_RUN )) && echo "# install spactor and t5x on every worker"
  if [[ -n $REPO_URL ]]; then
    fetch="rm -rf ~/spactor && git clone --depth 1 --branch $(q "$BRANCH") $(q "$REPO_URL") ~/spactor"
  else
    run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:spactor.tar.gz" "${GCLOUD_LOC[@]}" --worker=all
    fetch="rm -rf ~/spactor && mkdir -p ~/spactor && tar -xzf ~/spactor.tar.gz -C ~/spactor"
  fi
  ssh_all "set -e; $fetch && cd ~/spactor && python3 -m pip install -U pip && python3 -m pip install -e '.[tpu]' && python3 -m pip install --no-deps $(join_quoted "${T5X_GIT[@]}") && python3 -m pip install $(join_quoted "${T5X_DEPS[@]}")"
fi

# ---- 3. the two stages, once per τ (τ = 0: the SC baseline) -------------------------------------------------
if (( DETACH )); then
  chain="cd ~/spactor"
  for t in "${TAUS[@]}"; do mapfile -t cmds < <(runs_of "$t"); for cmd in "${cmds[@]}"; do chain+=" && $cmd"; done; done
  (( DRY_RUN )) && echo "# all experiments in the background; log in ~/spactor-logs/$EXPERIMENT.log on each worker"
  ssh_all "mkdir -p ~/spactor-logs && nohup bash -c $(q "$chain") > ~/spactor-logs/$(q "$EXPERIMENT").log 2>&1 < /dev/null &"
else
  for t in "${TAUS[@]}"; do
    if (( DRY_RUN )); then
      if (( t == 0 )); then echo "# τ=0: the SC baseline (span corruption) to step $TOTAL_STEPS"
      else echo "# τ=$t: stage 1 (SpacTor) to step $t, then stage 2 (span corruption) to step $TOTAL_STEPS"; fi
    fi
    mapfile -t cmds < <(runs_of "$t")  # an array, not a read loop: ssh would read the loop's stdin
    for cmd in "${cmds[@]}"; do ssh_all "cd ~/spactor && $cmd"; done
  done
fi

#!/bin/sh
# One shard of a pipemail campaign, for a Kubernetes Indexed Job or a Slurm job array.
# pipemail takes K from the scheduler (--shard auto/N: $JOB_COMPLETION_INDEX + 1, or
# $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN + 1) and writes $DATA/reports/report-K.csv.
# A task that runs again (a pod restarted after a crash, a requeued array task) resumes its
# own report: rows already sent are copied, the rest is sent.
#
# Environment: PIPEMAIL_SHARDS (N, required), PIPEMAIL_HOST (required), PIPEMAIL_DATA
# (default /data: list.csv, msg.eml, reports/), PIPEMAIL_ARGS (more flags, optional),
# PIPEMAIL_USER / PIPEMAIL_PASSWORD for AUTH (from a Secret; never on the command line).
set -eu
: "${PIPEMAIL_SHARDS:?set PIPEMAIL_SHARDS to the number of shards}"
: "${PIPEMAIL_HOST:?set PIPEMAIL_HOST to the SMTP server}"
DATA=${PIPEMAIL_DATA:-/data}
mkdir -p "$DATA/reports"

# K as pipemail computes it, only to know whether this shard has a report to resume.
if [ -n "${JOB_COMPLETION_INDEX:-}" ]; then
    K=$((JOB_COMPLETION_INDEX + 1))
elif [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    K=$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN + 1))
else
    echo "run-shard.sh: neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set" >&2
    exit 64
fi
REPORT="$DATA/reports/report-{shard}.csv"
RESUME=""
if [ -e "$DATA/reports/report-$K.csv" ] || [ -e "$DATA/reports/report-$K.csv.resume" ]; then
    RESUME="--resume $REPORT"
fi

# The template is optional: without msg.eml the list carries the message.
TEMPLATE=""
if [ -e "$DATA/msg.eml" ]; then
    TEMPLATE="--template $DATA/msg.eml"
fi

set +e
# shellcheck disable=SC2086 # word splitting of the optional flags is intended
pipemail send --list "$DATA/list.csv" $TEMPLATE --shard "auto/$PIPEMAIL_SHARDS" \
    --report "$REPORT" $RESUME --quiet ${PIPEMAIL_ARGS:-}
code=$?
set -e
# 0: all sent; 1: the shard completed and its report says which rows failed. Anything else
# (69 no session, 75 try later, 74 report not writable) fails the task so that it is retried.
if [ "$code" -eq 1 ]; then
    exit 0
fi
exit "$code"

#!/bin/sh
# A sharded pipemail campaign as a Slurm job array: task t of --array=1-4 sends shard
# t - min + 1 of 4 (`--shard auto/4` reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_MIN)
# and writes $PIPEMAIL_DATA/reports/report-K.csv on the shared file system. A requeued
# task resumes its own report. Submit from the directory holding run-shard.sh:
#   sbatch deploy/slurm/pipemail-array.sh
# and when every task is done:
#   pipemail report merge "$PIPEMAIL_DATA"/reports/report-*.csv -o "$PIPEMAIL_DATA"/reports/campaign.csv
#
#SBATCH --job-name=pipemail
#SBATCH --array=1-4
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=pipemail-%A_%a.log

# N must match the array's size.
export PIPEMAIL_SHARDS=4
export PIPEMAIL_HOST=${PIPEMAIL_HOST:-mx.example.net:25}
export PIPEMAIL_DATA=${PIPEMAIL_DATA:-/shared/pipemail}
export PIPEMAIL_ARGS=${PIPEMAIL_ARGS:---tls starttls --connections 4 --rate 50/s}
# AUTH: export PIPEMAIL_USER and PIPEMAIL_PASSWORD (e.g. from a file readable only by you).
exec sh "${SLURM_SUBMIT_DIR:-.}/deploy/run-shard.sh"

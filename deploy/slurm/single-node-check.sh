#!/usr/bin/env bash
# A real run of deploy/slurm/distill.sbatch (CPU mode) on a one-node Slurm started here, as root, on
# 127.0.0.1: installs pinned Debian bookworm packages, writes munge key and slurm.conf into a temp dir
# (nothing under /etc is used), runs munged, slurmctld and slurmd in the foreground as children of
# this script, labels the corpus with the teacher, and fails unless the job succeeded. Every daemon it
# started is stopped by PID on any exit; the temp dir is removed on success (KEEP=1 keeps it).
#
#   deploy/slurm/single-node-check.sh MODEL_DIR CORPUS STORE
#   deploy/slurm/single-node-check.sh assets/models/all-MiniLM-L6-v2 /tmp/tiny.jsonl /tmp/distill-store
#
# DISTILL: the distill binary (default: target/debug/distill). SLURMCTLD_PORT, SLURMD_PORT: default
# 16817 and 16818 (not Slurm's 6817/6818, so a real Slurm on this machine is left alone).
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: $0 MODEL_DIR CORPUS STORE" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "single-node-check: run as root (apt-get, daemons as SlurmUser=root)" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
# The job runs in the temp dir: every path it is given must be absolute.
abs() { if [[ $1 == *://* ]]; then echo "$1"; else realpath -m "$1"; fi; }
model=$(abs "$1") corpus=$(abs "$2") store=$(abs "$3")
DISTILL=$(realpath "${DISTILL:-$root/target/debug/distill}")
ctld_port=${SLURMCTLD_PORT:-16817} slurmd_port=${SLURMD_PORT:-16818}
t0=$SECONDS
took() { echo "single-node-check: $1 ($(( SECONDS - t0 )) s)" >&2; t0=$SECONDS; }
die() { echo "single-node-check: $*" >&2; exit 1; }

# Versions from `apt-cache policy` on Debian bookworm; slurmd and slurmctld need the plugins of
# exactly their version. No recommends: they pull in every -dev plugin package.
pins=(munge=0.5.15-2+deb12u1 slurm-client=22.05.8-4+deb12u3 slurm-wlm-basic-plugins=22.05.8-4+deb12u3
      slurmctld=22.05.8-4+deb12u3 slurmd=22.05.8-4+deb12u3)
missing=()
for pin in "${pins[@]}"; do
  [[ $(dpkg-query -W -f '${Version}' "${pin%%=*}" 2>/dev/null) == "${pin#*=}" ]] || missing+=("$pin")
done
if (( ${#missing[@]} )); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
took "packages: ${pins[*]}"

for port in "$ctld_port" "$slurmd_port"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is taken: set SLURMCTLD_PORT/SLURMD_PORT"; fi
done

work=$(mktemp -d /tmp/distill-slurm-check.XXXXXX)
# munged refuses a socket whose directory (and parents) others cannot search; mktemp makes it 0700.
# The key stays private in its own 0700 directory.
chmod 755 "$work"
mkdir -p "$work/munge" "$work/key" "$work/state" "$work/spool" "$work/log"
chmod 700 "$work/key"
head -c 1024 /dev/urandom >"$work/key/munge.key"
chmod 400 "$work/key/munge.key"
sock=$work/munge/munge.socket

# Slurm's client commands (sbatch, squeue, …) find the cluster through SLURM_CONF.
export SLURM_CONF=$work/slurm.conf
cat >"$SLURM_CONF" <<EOF
# One node, no cgroups, no accounting: written by deploy/slurm/single-node-check.sh.
ClusterName=distillcheck
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

munged_pid='' ctld_pid='' slurmd_pid='' jid='' ok=0
# Stops in reverse order of start: jobs first (slurmstepd outlives slurmd), then slurmd, slurmctld, munged.
# shellcheck disable=SC2317 # reached through the EXIT trap, which shellcheck 0.9 does not follow
stop() {
  local pid waited
  if [[ -n $jid && -n $ctld_pid ]]; then
    scancel "$jid" 2>/dev/null || true
    for (( waited = 0; waited < 60; waited++ )); do
      if [[ -z $(squeue -h -j "$jid" 2>/dev/null) ]]; then break; fi
      sleep 1
    done
  fi
  for pid in "$slurmd_pid" "$ctld_pid" "$munged_pid"; do
    [[ -n $pid ]] || continue
    kill -TERM "$pid" 2>/dev/null || true
    waited=0
    while kill -0 "$pid" 2>/dev/null && (( waited++ < 20 )); do sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true   # still there after 10 s
    wait "$pid" 2>/dev/null || true
  done
}
# shellcheck disable=SC2317 # reached through the EXIT trap
cleanup() {
  trap '' INT TERM
  stop
  if (( ok )) && [[ -z ${KEEP:-} ]]; then rm -rf "$work"; else echo "single-node-check: logs in $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

munged -F --socket="$sock" --key-file="$work/key/munge.key" --pid-file="$work/munge/munged.pid" \
  --log-file="$work/log/munged.log" --seed-file="$work/munge/munged.seed" </dev/null >"$work/log/munged.out" 2>&1 &
munged_pid=$!
for (( i = 0; ; i++ )); do
  if munge -S "$sock" -n </dev/null >/dev/null 2>&1; then break; fi
  if (( i >= 50 )) || ! kill -0 "$munged_pid" 2>/dev/null; then
    die "munged did not start: $(tail -n 3 "$work/log/munged.log" 2>/dev/null)"
  fi
  sleep 0.2
done
slurmctld -D -f "$SLURM_CONF" </dev/null >"$work/log/slurmctld.out" 2>&1 &
ctld_pid=$!
# The node is called localhost whatever this machine's hostname is.
slurmd -D -f "$SLURM_CONF" -N localhost </dev/null >"$work/log/slurmd.out" 2>&1 &
slurmd_pid=$!
for (( i = 0; ; i++ )); do
  if [[ $(sinfo -h -n localhost -o %T 2>/dev/null) == idle ]]; then break; fi
  if (( i >= 60 )) || ! kill -0 "$ctld_pid" 2>/dev/null || ! kill -0 "$slurmd_pid" 2>/dev/null; then
    die "the node is not idle after 30 s: $(tail -n 3 "$work/log/slurmctld.log" "$work/log/slurmd.log" 2>&1)"
  fi
  sleep 0.5
done
took "munged, slurmctld, slurmd up; $(sinfo -h -o '%P %D node(s) %T')"

# The CPU variant, on all of this machine's CPUs.
cd "$work"
jid=$(env DISTILL="$DISTILL" DISTILL_DEVICE=cpu DISTILL_STORE="$store" DISTILL_CORPUS="$corpus" \
      DISTILL_TEACHER="$model" DISTILL_OUTPUT=embeddings \
      sbatch --parsable --cpus-per-task="$(nproc)" --time=10 --output="$work/job-%j.out" \
      "$root/deploy/slurm/distill.sbatch")
state=''
for (( i = 0; i < 600; i++ )); do
  state=$(scontrol show job "$jid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2) || true
  case $state in PENDING | RUNNING | CONFIGURING | COMPLETING | '') sleep 1 ;; *) break ;; esac
done
exit_code=$(scontrol show job "$jid" | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2)
took "job $jid: $state, exit code $exit_code"
cat "$work/job-$jid.out"
[[ $state == COMPLETED && $exit_code == 0:0 ]] || die "job $jid did not succeed"
grep -q '"state": "succeeded"' "$work/job-$jid.out" || die "no succeeded summary in job-$jid.out"
ok=1

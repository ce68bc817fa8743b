#!/usr/bin/env bash
# Runs this repository on a bare machine with a GPU and Python (torch, timm, scikit-learn,
# pandas, pytest) but no internet, no DomainBed and no wilds.
#
#   bash tools/device.sh prep                  here, with the network: fills .device/ (ignored)
#   bash tools/device.sh run MODE [MODE...]    there, from a copy of the repository + .device/
#
# prep: .device/DomainBed = DomainBed at the pinned commit (git archive of DOMAINBED_DIR,
#   no .git); .device/whl = the wheels DomainBed's imports and the editable install need that
#   such a machine lacks (wilds and its pure-Python requirements; hatchling, this package's
#   build backend), for Python 3.12 on x86-64 Linux.
# run: installs the wheels into the interpreter PY (default python3), makes DomainBed
#   importable (a .pth file), installs this package editable without dependencies (so its
#   autoload .pth and entry points are there and DomainBed's fresh train processes know its
#   algorithms), checks it, then runs each MODE in order:
#     gpu-check   make gpu-check -> cuda.md, cuda.json, gpu_check.log
#     study       the sweep STUDY_SWEEP (default style_study) with the launcher STUDY_LAUNCHER
#                 (default local_parallel), LPA_DOMAINBED_JOBS (default 16) jobs at a time,
#                 at most STUDY_TIMEOUT s (default 330), then its tables ->
#                 <sweep>_records.tar.gz (every job's results.jsonl
#                 and done), <sweep>_tables.tar.gz (the tables' folder), <sweep>.log.
#                 STUDY_RESUME=<records.tar.gz> (e.g. results/style_study/records.tar.gz)
#                 continues an earlier part: its records are extracted first, so the sweep
#                 skips the finished jobs and restarts the ones cut off (their partial
#                 records stay in that archive); the new archive holds both parts.
#     cmd         the rest of the arguments, after '--', as a command
#   Files go to $OUT (default device_out/), at most 2 folders deep.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV="$ROOT/.device"
PY=${PY:-python3}
OUT=${OUT:-$ROOT/device_out}
DOMAINBED_DIR=${DOMAINBED_DIR:-$HOME/.cache/lpa-domainbed/DomainBed}
DOMAINBED_COMMIT=b93c22a
# Missing on the GPU machines (their package list) and needed: DomainBed imports wilds, which
# imports outdated (-> littleutils) and pytz; ogb is wilds' declared requirement. hatchling
# (+ editables, trove-classifiers, tomlkit) builds this package's editable install offline.
WHEELS="wilds==2.0.0 ogb==1.3.6 outdated==0.2.2 littleutils==0.2.4 pytz==2026.6
        hatchling==1.33.0 editables==0.5 trove-classifiers==2026.9.21.13 tomlkit==0.13.3"

say() { echo "==> $*"; }
die() { echo "device.sh: $*" >&2; exit 1; }

prep() {
  [ -f "$DOMAINBED_DIR/domainbed/algorithms.py" ] ||
    die "no DomainBed checkout in $DOMAINBED_DIR: run 'make setup' or set DOMAINBED_DIR"
  rm -rf "$DEV" && mkdir -p "$DEV/DomainBed" "$DEV/whl" || exit 1
  say "DomainBed $DOMAINBED_COMMIT from $DOMAINBED_DIR -> .device/DomainBed"
  git -C "$DOMAINBED_DIR" archive "$DOMAINBED_COMMIT" | tar -x -C "$DEV/DomainBed" ||
    die "git archive $DOMAINBED_COMMIT failed in $DOMAINBED_DIR (fetch that commit)"
  say "wheels for Python 3.12 x86-64 -> .device/whl"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEV/whl" $WHEELS || die "pip download failed"
  say "ready: $(du -sh "$DEV" | cut -f1) in .device (carry it: the run's 'carry' names .device)"
}

install() {
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') ||
    die "$PY does not run: set PY to the interpreter that has torch"
  [ -d "$DEV/whl" ] && [ -d "$DEV/DomainBed" ] ||
    die ".device/ is missing: run 'bash tools/device.sh prep' on a machine with the network, and carry .device"
  say "installing $(ls "$DEV/whl" | wc -l) wheels into $site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$DEV"/whl/*.whl ||
    die "installing the wheels failed"
  echo "$DEV/DomainBed" > "$site/_lpa_domainbed_domainbed.pth"
  say "installing lpa-domainbed (editable, no dependencies)"
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e "$ROOT" ||
    die "the editable install failed"
  (cd /tmp && "$PY" -c '
import domainbed.algorithms as a, domainbed.command_launchers as c, lpa_domainbed, torch
assert "LPA" in a.ALGORITHMS and "local_parallel" in c.REGISTRY, "autoload did not register"
print("    DomainBed, lpa_domainbed (autoload), torch", torch.__version__, "CUDA",
      torch.cuda.is_available())') || die "the installed package does not register into DomainBed"
}

gpu_check() {
  say "make gpu-check PY=$PY"
  if command -v make >/dev/null; then
    make -C "$ROOT" --no-print-directory gpu-check PY="$PY" 2>&1 | tee "$OUT/gpu_check.log"
  else
    (cd "$ROOT" && "$PY" -m lpa_domainbed.tools.gpu_check) 2>&1 | tee "$OUT/gpu_check.log"
  fi
  local rc=${PIPESTATUS[0]}
  cp "$ROOT"/results/benchmarks/cuda.md "$ROOT"/results/benchmarks/cuda.json "$OUT"/ 2>/dev/null
  return "$rc"
}

study() {
  local name=${STUDY_SWEEP:-style_study} jobs=${LPA_DOMAINBED_JOBS:-16}
  local limit=${STUDY_TIMEOUT:-330} out="sweeps_output/${STUDY_SWEEP:-style_study}" t0=$SECONDS
  local launcher=${STUDY_LAUNCHER:-local_parallel} resume=()
  if [ -n "${STUDY_RESUME:-}" ]; then
    [ -f "$ROOT/$STUDY_RESUME" ] || die "STUDY_RESUME=$STUDY_RESUME: no such archive in the repository"
    [ ! -e "$ROOT/$out" ] || die "STUDY_RESUME: $out exists already; move it away first"
    mkdir -p "$ROOT/sweeps_output" && tar -xzf "$ROOT/$STUDY_RESUME" -C "$ROOT/sweeps_output" ||
      die "extracting $STUDY_RESUME failed"
    say "resuming from $STUDY_RESUME: $(find "$ROOT/$out" -name done | wc -l) jobs done"
    resume=(--restart_incomplete)
  fi
  say "sweep $name: $jobs jobs at a time ($launcher), at most $limit s"
  (cd "$ROOT" && LPA_DOMAINBED_JOBS=$jobs timeout "$limit" "$PY" -m lpa_domainbed.tools.cli \
     sweep "$name" --data_dir sweeps_output/data --output_dir "$out" --launcher "$launcher" \
     "${resume[@]}"
   echo "sweep exit status $? after $((SECONDS - t0)) s"
   "$PY" -m lpa_domainbed.tools.cli tables --input_dir "$out" --name "$name" \
     --out_dir "sweeps_output/tables/$name") 2>&1 | tee "$OUT/$name.log"
  # records: <name>/<job>/{results.jsonl,done} (extract into sweeps_output/); tables: <name>/
  # (extract into results/)
  # (separately: the records come back even when the tables could not be made)
  (cd "$ROOT/sweeps_output" && find "$name" \( -name results.jsonl -o -name done \) -print0 |
     tar -czf "$OUT/${name}_records.tar.gz" --null -T -) ||
    echo "device.sh: packing the study's records failed" | tee -a "$OUT/$name.log"
  tar -czf "$OUT/${name}_tables.tar.gz" -C "$ROOT/sweeps_output/tables" "$name" ||
    echo "device.sh: packing the study's tables failed" | tee -a "$OUT/$name.log"
  say "study: $((SECONDS - t0)) s"
}

case "${1:-}" in
  prep) prep ;;
  run)
    shift
    [ $# -gt 0 ] || die "run needs a MODE: gpu-check, study or cmd -- COMMAND"
    for mode in "$@"; do  # every mode checked before anything is installed
      case "$mode" in
        gpu-check|study) ;;
        cmd) break ;;
        *) die "unknown mode '$mode': gpu-check, study or cmd -- COMMAND (nothing was installed)" ;;
      esac
    done
    mkdir -p "$OUT"
    install 2>&1 | tee "$OUT/device_setup.log"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 1
    status=0
    while [ $# -gt 0 ]; do
      mode=$1; shift
      case "$mode" in
        gpu-check) gpu_check || status=1 ;;
        study) study || status=1 ;;
        cmd) [ "${1:-}" = "--" ] && shift; (cd "$ROOT" && "$@") || status=1; break ;;
        *) die "unknown mode '$mode': gpu-check, study or cmd -- COMMAND" ;;
      esac
    done
    exit "$status" ;;
  *) die "usage: bash tools/device.sh prep | run MODE [MODE...] (gpu-check, study, cmd -- COMMAND)" ;;
esac

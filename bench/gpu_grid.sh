#!/usr/bin/env bash
# A slice of a grid on a lent GPU (no network, no bd install), for rows a 2-core CPU would need days
# for. The bd packages go on PYTHONPATH; the attacked models are the committed CPU-trained ones
# (experiments/beyond/models, the same weights the store's other rows used: checked by their digest);
# the data comes from $BD_DATA, carried with the run (.bd/data by default); the rows go to
# $OUT/grid.sqlite, each stored as it finishes, and are merged here afterwards:
#
#   BD_DATA=.bd/data BUDGET_S=480 bash bench/gpu_grid.sh --defense sau,anp --tune --spc 100
#   bd merge <files_at>/grid.sqlite --into experiments/beyond/beyond.sqlite
#
# Arguments are `bd grid`'s, added to SLICE (default: the #17 grid's 3 attacks x 3 partitions, quick).
# WORKERS processes share the GPU (the quick models leave it mostly idle); the grid stops at
# BUDGET_S, keeping every finished unit (an unfinished one is run again by the next grid).
# STORE names the results file (several lanes of different lengths can run side by side, each
# with its own); SEED, a store copied into it first, makes the grid skip the units SEED has.
# A tuned unit keeps its finished candidates ($BD_CACHE/trials, a few KB each) and resumes after
# them: they come back as $OUT/trials.tar; carry that file as $TRIALS (e.g. .bd/trials.tar) on
# the next lease and a unit longer than one call (SAU tuned: four SAU runs) finishes there.
# At most 8 files come back from a call: with N lanes that is N stores, N logs, device.txt and
# trials.tar, so three lanes at most.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-bench/gpu-out}
BUDGET_S=${BUDGET_S:-480}
WORKERS=${WORKERS:-12}
STORE=${STORE:-$OUT/grid.sqlite}
LOG=${STORE%.sqlite}.log
mkdir -p "$OUT"
[ -n "${SEED:-}" ] && [ ! -e "$STORE" ] && cp "$SEED" "$STORE"
export PYTHONPATH="$PWD/packages/bd-kernels/src:$PWD/packages/bd-core/src:$PWD/packages/bd-defenses/src:$PWD/packages/bd-cli/src"
export BD_PROGRESS=0 BD_CACHE=${BD_CACHE:-/tmp/bd-gpu-cache} BD_DATA=${BD_DATA:-$PWD/.bd/data} PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1
mkdir -p "$BD_CACHE" && cp -rn experiments/beyond/models/. "$BD_CACHE/"
[ -n "${TRIALS:-}" ] && [ -f "$TRIALS" ] && tar -xf "$TRIALS" -C "$BD_CACHE"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/device.txt" 2>&1 || echo cpu > "$OUT/device.txt"
# the extension is not built: the kernels' pure-torch references give the same results
SLICE=${SLICE:---attack badnets,blended,ssba --partitions 3 --preset quick}
# timeout signals its whole process group: the pool's workers stop with the grid. TERM, not INT:
# a lane started with `&` by a non-interactive shell ignores SIGINT (and so would every bd process
# in it); the grid takes SIGTERM as it takes Ctrl-C (rows kept, workers stopped, exit 130)
timeout -s TERM -k 30 "$BUDGET_S" $PY -m bd_cli.app grid $SLICE \
  --store "$STORE" --workers "$WORKERS" --device "${DEVICE:-cuda}" "$@" 2>&1 | tail -40 > "$LOG"
echo "grid exit status ${PIPESTATUS[0]}" >> "$LOG"
# one self-contained file comes back (no -wal beside it)
$PY -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); \
print(c.execute('select status, count(*) from results group by status').fetchall())" "$STORE" \
  >> "$LOG" 2>&1
# every lane's kept candidates in one file (lanes share $BD_CACHE; the last one to stop writes it,
# each through its own temporary file so two lanes stopping together leave a whole one)
[ -d "$BD_CACHE/trials" ] && tar -cf "$OUT/trials.$$.tmp" -C "$BD_CACHE" trials && mv "$OUT/trials.$$.tmp" "$OUT/trials.tar"
tail -8 "$LOG"

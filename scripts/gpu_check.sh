#!/usr/bin/env bash
# tuner on a GPU: the checks to run when a session is lent one, prepared so that its few minutes of
# device time go to running them, not to writing them (issue 23: figures for K = 16..256 on a GPU).
#
#   bash scripts/gpu_check.sh fetch    # here, where pip reaches PyPI: the wheels the GPU image lacks
#                                      # (optuna, SQLAlchemy, plotly...) into .whl/ (git-ignored), ~23 MB
#   bash scripts/gpu_check.sh run      # there, with .whl carried: under 9 minutes; results under $OUT
#
# The device tool's call: run(command="bash scripts/gpu_check.sh run", carry=[".whl"], timeout_s=600).
# What it does there, each part under its own time limit (500 s together) so that a slow part
# leaves the others their time; it exits 1 if any part failed or ran out of time:
#   1. the device: nvidia-smi, torch's version and the GPU it sees;
#   2. the quickstart through the command line on CUDA, then `tuner best` on CUDA (the values it
#      stored and reproduced are in the output);
#   3. scripts/bench_lr_stage.py on CUDA: the quickstart MLP's LR stage, 128 trials, one at a time
#      against K = 16..128 batched (hand-written and torch.func copies, and through the runner), and
#      the user-model CNNs, 32 trials, at K = 16 and 32;
#   4. the test suite on that machine's cores (its tests train on the CPU; PostgreSQL and the
#      browser are not there, so those tests skip as they do without CI=true). It has not run under
#      pytest-xdist before: confirm a failure there alone before believing it.
# BIG=1 runs only the MLP at K = 256 (256 trials a side), for a second call. DEVICE=cpu QUICK=1 runs
# the same plumbing here in a minute or two, as a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."

fetch() {
    mkdir -p .whl
    # The GPU image (device README, KINDS.md) has torch, numpy, pandas, scikit-learn, typer, rich, tqdm,
    # matplotlib, narwhals, grpcio and pytest-xdist, but none of these: optuna and its storage, tuner's
    # report and dashboard, PostgreSQL's driver (imported by tuner.storage). Python 3.12 there.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        "optuna==5.1.0" alembic mako colorlog sqlalchemy greenlet plotly optuna-dashboard bottle psycopg psycopg-binary \
        || { echo "downloading the wheels failed" >&2; exit 1; }
    du -sh .whl
}

failed=()

step() {  # step NAME SECONDS COMMAND...: run it under its limit, its output into $out/NAME.txt, its tail shown
    local name="$1" limit="$2"
    shift 2
    echo "== $name"
    # SIGINT first, so that pytest and the benchmarks print what they have; SIGKILL 10 s later.
    timeout -s INT -k 10 "$limit" "$@" > "$out/$name.txt" 2>&1
    local code=$?
    echo "exit $code" >> "$out/$name.txt"
    tail -n 14 "$out/$name.txt"
    [ "$code" -eq 0 ] || failed+=("$name (exit $code)")
}

run() {
    out="${OUT:-runs/gpu_check}"
    local device="${DEVICE:-cuda}" quick="${QUICK:-}" big="${BIG:-}"
    mkdir -p "$out"
    if ! python3 -c "import optuna" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then  # the GPU image: no optuna
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
            || { echo "installing the carried wheels failed" | tee "$out/device.txt"; exit 1; }
        export PYTHONPATH="/tmp/gpu_check_site"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    local work
    work="$(mktemp -d)"

    { date; nvidia-smi 2>&1 || echo "no nvidia-smi"; uptime
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
                  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    } > "$out/device.txt" 2>&1
    cat "$out/device.txt"

    local mlp cnn tests workers
    if [ -n "$big" ]; then
        step bench_mlp_256 300 python3 scripts/bench_lr_stage.py --device "$device" --rounds 1 --trials 256 --batch 256 --no-func
    else
        if [ -n "$quick" ]; then mlp=(--trials 16 --batch 8 16); cnn=(--trials 8 --batch 8); tests=(tests/test_batched.py)
        else mlp=(--trials 128 --batch 16 32 64 128); cnn=(--trials 32 --batch 16 32); tests=(); fi
        step quickstart 80 bash -c 'cd "$1" && python3 -m tuner.cli study "$2/studies/quickstart.toml" --device "$3" \
                --storage "sqlite:///$1/q.db" && python3 -m tuner.cli best quickstart --device "$3" \
                --storage "sqlite:///$1/q.db" && cat quickstart-best/metrics.json' _ "$work" "$PWD" "$device"
        step bench_mlp 180 python3 scripts/bench_lr_stage.py --device "$device" --rounds 1 "${mlp[@]}"
        step bench_cnn 90 python3 scripts/bench_lr_stage.py --family cnn --device "$device" --rounds 1 "${cnn[@]}"
        workers=()
        python3 -c "import xdist" 2>/dev/null && workers=(-n 12)
        step tests 150 env -u CI python3 -m pytest -q -p no:cacheprovider ${workers[@]+"${workers[@]}"} ${tests[@]+"${tests[@]}"}
    fi
    rm -rf "$work"
    if [ ${#failed[@]} -gt 0 ]; then
        echo "failed: ${failed[*]}"
        exit 1
    fi
    echo "every part passed"
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_check.sh fetch|run  (see its header)" >&2; exit 2 ;;
esac

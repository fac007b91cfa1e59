#!/usr/bin/env bash
# tuner on a GPU: the checks to run when a session is lent one, prepared so that its few minutes of
# device time go to running them, not to writing them (issue 23: figures for K = 16..256 on a GPU).
#
#   bash scripts/gpu_check.sh fetch    # here, where pip reaches PyPI: the wheels the GPU image lacks
#                                      # (optuna, SQLAlchemy, plotly...) into .whl/ (git-ignored), ~23 MB
#   bash scripts/gpu_check.sh run      # there, with .whl carried: at most 9 minutes; results under $OUT
#
# The device tool's call: run(command="bash scripts/gpu_check.sh run", carry=[".whl"], timeout_s=600).
# What it does there, each part under its own time limit so that one slow part leaves the others:
#   1. the device: nvidia-smi, torch's version and the GPU it sees;
#   2. the quickstart through the command line on CUDA, then `tuner best` on CUDA (the values it
#      stored and reproduced are in the output);
#   3. scripts/bench_lr_stage.py on CUDA: the quickstart MLP's LR stage, 128 trials, one at a time
#      against K = 16..128 batched (hand-written and torch.func copies, and through the runner), and
#      the user-model CNNs at K = 16..64 (K = 256 needs 256 trials a side: a second call,
#      `BIG=1 bash scripts/gpu_check.sh run`, runs the MLP at K = 256 alone);
#   4. the test suite on that machine's 16 cores (its tests train on the CPU; PostgreSQL and the
#      browser are not there, so those tests skip as they do without CI=true).
# DEVICE=cpu QUICK=1 runs the same plumbing here in a minute or two, as a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."

fetch() {
    mkdir -p .whl
    # The GPU image (device README, KINDS.md) has torch, numpy, pandas, scikit-learn, typer, rich, tqdm,
    # matplotlib, grpcio and pytest-xdist, but none of these: optuna and its storage, tuner's report and
    # dashboard, PostgreSQL's driver (imported by tuner.storage). Python 3.12 there.
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        "optuna==5.1.0" alembic mako colorlog sqlalchemy greenlet plotly optuna-dashboard bottle psycopg psycopg-binary
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    du -sh .whl
}

run() {
    local out="${OUT:-runs/gpu_check}" device="${DEVICE:-cuda}" quick="${QUICK:-}"
    mkdir -p "$out"
    if ! python3 -c "import optuna" 2>/dev/null && compgen -G ".whl/*.whl" > /dev/null; then  # the GPU image: no optuna
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
            || { echo "installing the carried wheels failed" | tee "$out/device.txt"; exit 1; }
        export PYTHONPATH="/tmp/gpu_check_site"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    local tuner=(python3 -c "import sys; from tuner.cli import main; sys.argv[0] = 'tuner'; main()")
    local work; work="$(mktemp -d)"

    { date; nvidia-smi 2>&1 || echo "no nvidia-smi"; uptime
      python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
                  torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
    } > "$out/device.txt" 2>&1
    cat "$out/device.txt"

    echo "== the quickstart and tuner best on $device"
    (cd "$work" && timeout 60 "${tuner[@]}" study "$OLDPWD/studies/quickstart.toml" --device "$device" \
            --storage "sqlite:///$work/q.db" \
        && timeout 40 "${tuner[@]}" best quickstart --device "$device" --storage "sqlite:///$work/q.db" \
        && cat quickstart-best/metrics.json) > "$out/quickstart.txt" 2>&1
    echo "exit $?" >> "$out/quickstart.txt"; tail -n 5 "$out/quickstart.txt"

    echo "== batched LR stage on $device"
    if [ -n "$quick" ]; then mlp=(--trials 16 --batch 8 16); cnn=(--trials 8 --batch 8)
    elif [ -n "${BIG:-}" ]; then mlp=(--trials 256 --batch 256 --no-func); cnn=()
    else mlp=(--trials 128 --batch 16 32 64 128); cnn=(--trials 64 --batch 16 32 64); fi
    timeout 200 python3 scripts/bench_lr_stage.py --device "$device" --rounds 1 "${mlp[@]}" > "$out/bench_mlp.txt" 2>&1
    echo "exit $?" >> "$out/bench_mlp.txt"; tail -n 12 "$out/bench_mlp.txt"
    if [ ${#cnn[@]} -gt 0 ]; then
        timeout 100 python3 scripts/bench_lr_stage.py --family cnn --device "$device" --rounds 1 "${cnn[@]}" > "$out/bench_cnn.txt" 2>&1
        echo "exit $?" >> "$out/bench_cnn.txt"; tail -n 12 "$out/bench_cnn.txt"
    fi
    [ -n "${BIG:-}" ] && return

    echo "== the test suite"
    local workers=()
    python3 -c "import xdist" 2>/dev/null && workers=(-n 12)
    if [ -n "$quick" ]; then tests=(tests/test_batched.py tests/test_functional.py); else tests=(); fi
    (unset CI; timeout 180 python3 -m pytest -q -p no:cacheprovider "${workers[@]}" "${tests[@]}") > "$out/tests.txt" 2>&1
    echo "exit $?" >> "$out/tests.txt"; tail -n 5 "$out/tests.txt"
    rm -rf "$work"
}

case "${1:-}" in
    fetch) fetch ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_check.sh fetch|run  (see its header)" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The GPU check: install, CUDA tests, pipeline/detection/service benchmarks, one report.
#
# GPU machines are lent briefly, cannot reach a package registry and have no ../shared, so
# the check is in two halves:
#
#   benchmarks/gpu_check.sh prepare        # here, with the registry: fills .gpu_check/
#       (Python 3.12 wheels of what the GPU image lacks, the three dlib model files, a few
#        photos from ../shared/data; about 60 MiB, git-ignored)
#   benchmarks/gpu_check.sh run [--device cuda] [--quick] [OUT_DIR]
#       # there, with .gpu_check carried: `run` the device tool with carry [".gpu_check"]
#       # and the command `benchmarks/gpu_check.sh run "$OUT"`; within 8 minutes
#
# `run --device cpu` does everything but CUDA on any machine (that is how it is checked
# before a GPU is at hand). Each step has its own time limit; a failed step is reported and
# the next one runs. The report is OUT_DIR/gpu_check.md, with every benchmark's JSON beside.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STAGE=$REPO/.gpu_check
PY=${GPU_CHECK_PY:-python3}

prepare() {
    local pip=${GPU_CHECK_PIP:-.venv/bin/pip} py=${GPU_CHECK_PREP_PY:-.venv/bin/python}
    rm -rf "$STAGE" && mkdir -p "$STAGE/wheels" "$STAGE/site/face_recognition_models/models" \
        "$STAGE/data"
    # What the GPU image (torch, numpy, pillow, httpx, tqdm, matplotlib, pytest, hypothesis,
    # scikit-image, prometheus-client, anyio, click, h11 are there) lacks, for its Python
    # 3.12, at the versions this checkout's venv runs (an unpinned fastapi once brought a
    # dependency, opentelemetry-api, that the image lacked).
    local wanted=(faiss-cpu fastapi starlette pydantic pydantic-core pydantic-settings
                  python-dotenv python-multipart uvicorn annotated-types annotated-doc
                  typing-inspection opentelemetry-api safetensors pytest-timeout dlib-bin)
    local pinned
    pinned=$("$py" - "${wanted[@]}" <<'PYEOF'
import sys
from importlib.metadata import version
print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PYEOF
    ) || return 1
    # shellcheck disable=SC2086  # one word per requirement
    "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$STAGE/wheels" $pinned || return 1
    # The dlib models, as a package directory (the 68-point model, 100 MB, is never used).
    local src
    src=$("$py" -c "import importlib.util as u; print(list(u.find_spec('face_recognition_models').submodule_search_locations)[0])")
    : > "$STAGE/site/face_recognition_models/__init__.py"
    cp "$src/models/mmod_human_face_detector.dat" "$src/models/shape_predictor_5_face_landmarks.dat" \
        "$src/models/dlib_face_recognition_resnet_model_v1.dat" \
        "$STAGE/site/face_recognition_models/models/"
    # Photos: the benchmarks' own (named people, group photos) and 64 LFW faces.
    local shared=${FACESERVE_SHARED_DATA:-$REPO/../shared/data}
    mkdir -p "$STAGE/data/people/misc" "$STAGE/data/people/test" "$STAGE/data/lfw/lfw-deepfunneled"
    cp "$shared/people/misc/obama-480p.jpg" "$shared/people/misc/obama-1080p.jpg" \
        "$STAGE/data/people/misc/"
    cp "$shared/people/test/obama_and_biden.jpg" "$STAGE/data/people/test/"
    cp -r "$shared/detect" "$STAGE/data/"
    cp "$shared/README.md" "$STAGE/data/"
    for d in $(ls "$shared/lfw/lfw-deepfunneled" | head -64); do
        mkdir -p "$STAGE/data/lfw/lfw-deepfunneled/$d"
        cp "$shared/lfw/lfw-deepfunneled/$d/${d}_0001.jpg" "$STAGE/data/lfw/lfw-deepfunneled/$d/"
    done
    du -sh "$STAGE"
    local bytes
    bytes=$(du -sb "$STAGE" | cut -f1)
    if (( bytes > 62 * 1024 * 1024 )); then
        echo "warning: .gpu_check is $((bytes / 1048576)) MiB; the device tool carries 64 MiB in all" >&2
    fi
}

run() {
    local device=cuda quick=0 out=""
    while (( $# )); do
        case $1 in
            --device) device=$2; shift 2 ;;
            --quick) quick=1; shift ;;
            *) out=$1; shift ;;
        esac
    done
    out=${out:-${OUT:-$REPO/benchmarks/results/gpu_check}}
    mkdir -p "$out"
    local report=$out/gpu_check.md
    # The project and its client package from this checkout (nothing is pip-installed
    # there but the staged wheels), the dlib model files from the stage.
    export PYTHONPATH=$REPO:$REPO/clients/python:$STAGE/site
    export FACESERVE_SHARED_DATA=${FACESERVE_SHARED_DATA:-$STAGE/data}
    # Outside OUT_DIR: the device tool brings back 8 files at most, and these are 3 of them.
    export FACESERVE_CACHE_DIR=${FACESERVE_CACHE_DIR:-${TMPDIR:-/tmp}/faceserve-gpu-check-weights}
    export PYTHONUNBUFFERED=1
    local started=$SECONDS
    {
        echo "# faceserve GPU check, $(date -u +%FT%TZ), device $device"
        echo
    } > "$report"

    step() {  # step NAME LIMIT_S COMMAND...
        local name=$1 limit=$2 t0=$SECONDS rc
        shift 2
        echo "== $name (limit ${limit}s)"
        {
            echo "## $name"
            echo
            echo '```'
        } >> "$report"
        timeout "$limit" "$@" 2>&1 | tee -a "$out/steps.log" | grep -v "^WARNING: Location" \
            | tail -n 60 >> "$report"
        rc=${PIPESTATUS[0]}
        {
            echo '```'
            echo
            echo "exit $rc, $((SECONDS - t0)) s"
            echo
        } >> "$report"
        echo "   exit $rc, $((SECONDS - t0)) s"
    }

    if [[ -d $STAGE/wheels ]] && ! "$PY" -c "import fastapi, faiss, dlib" 2>/dev/null; then
        step "install" 120 "$PY" -m pip install --no-index --no-deps --quiet \
            --disable-pip-version-check "$STAGE"/wheels/*.whl
    fi
    step "environment" 60 "$PY" - "$device" <<'PYEOF'
import sys, platform, torch, subprocess
device = sys.argv[1]
print("python", platform.python_version(), "torch", torch.__version__, "CUDA", torch.version.cuda,
      "cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv"], capture_output=True, text=True).stdout)
from models.pipeline import FacePipeline
from models.self_test import run_self_test
print(run_self_test(FacePipeline(device=device)))
PYEOF
    local quick_args=()
    (( quick )) && quick_args=(--repeats 2)
    step "CUDA tests" 180 "$PY" -m pytest -q -p no:cacheprovider -o addopts="" \
        tests/models/test_cuda.py tests/models/test_self_test.py
    # dlib, the reference, runs on the CPU once per cell: five repeats of it alone took
    # over two minutes there.
    step "bench_pipeline (embedding batches 1-256, detection)" 150 \
        "$PY" benchmarks/bench_pipeline.py --device "$device" --gpu-batch 256 \
        --dlib-repeats 1 --out "$out" "${quick_args[@]}"
    local detect_args=(--repeats 5)
    (( quick )) && detect_args=(--repeats 1)
    step "bench_detect (embed path by photo size and min_face_px)" 150 \
        "$PY" benchmarks/bench_detect.py --device "$device" --lfw 0 --out "$out" \
        "${detect_args[@]}"
    # Twice: at the defaults (on a GPU: no detection workers) and with workers on half the
    # cores, which detect on the CPU (README, GPU figures): small LFW photos and 640x480 ones,
    # where the CPU's detection costs far more than the GPU's.
    local service_args=(--faces 10000 --requests 200 --concurrency 1 4 16 --cell-seconds 12
                        --max-seconds 110 --batching on --endpoints verify identify embed640)
    (( quick )) && service_args=(--faces 1000 --requests 20 --concurrency 1 4 --cell-seconds 5
                                 --max-seconds 40 --batching on --endpoints identify embed640)
    step "bench_service (verify, identify, embed 640x480 over HTTP; defaults)" 150 \
        "$PY" benchmarks/bench_service.py --device "$device" --out "$out" "${service_args[@]}"
    local workers=$(( $(nproc) / 2 > 0 ? $(nproc) / 2 : 1 ))
    step "bench_service with $workers detection workers (FACESERVE_DETECTION_PROCESSES)" 150 \
        env FACESERVE_DETECTION_PROCESSES="$workers" "$PY" benchmarks/bench_service.py \
        --device "$device" --out "$out/workers" "${service_args[@]}"
    echo "total $((SECONDS - started)) s" >> "$report"
    echo "report: $report ($((SECONDS - started)) s)"
}

case ${1:-} in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
esac

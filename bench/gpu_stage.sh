#!/usr/bin/env bash
# Stage, where PyPI is reachable, the Python packages the GPU machine lacks, as wheels in .whl/ (git-ignored), for
# bench/gpu_session.sh. Versions: gpurun's block of the perf harness's wheels-list.txt (../shared/perf, see its
# README: the packages the CUDA image lacks besides torch/transformers/accelerate/peft), plus bitsandbytes from the
# box lock for AdamW8bit, repacked with only its CUDA 13 libraries (the whole wheel is over the 64 MiB a device
# call carries).   Usage: bash bench/gpu_stage.sh      (PERF=<harness folder>, PYVER=3.12, PYTHON=python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PERF=${PERF:-../shared/perf}
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
DEST=.whl
[ -f "$PERF/wheels-list.txt" ] || { echo "no $PERF/wheels-list.txt: set PERF to the perf harness folder"; exit 2; }
mkdir -p "$DEST"
# gpurun's block: the lines after the first blank line
mapfile -t REQS < <(awk 'found && NF {print} !NF {found=1}' "$PERF/wheels-list.txt")
BNB=$(grep -o '^bitsandbytes==[^ ]*' "gpurun/templates/box/lock-py$PYVER.txt")
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64 any; do PLATFORMS+=(--platform "$p"); done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$DEST" "${REQS[@]}" "$BNB"
# keep bitsandbytes' CUDA 13 and CPU libraries only (the image's torch is a CUDA 13 build)
$PY - "$DEST" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    if wheel.name.endswith(".cuda13.whl"):
        continue
    keep = lambda n: not re.search(r"libbitsandbytes_(cuda(?!13)\d+|rocm\d+)", n)
    out = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if not keep(item.filename):
                continue
            data = src.read(item)
            if item.filename.endswith("/RECORD"):
                data = b"".join(l + b"\n" for l in data.splitlines() if keep(l.decode().split(",")[0]))
            dst.writestr(item, data)
    out.replace(wheel)
PYEOF
ls -l "$DEST"
du -sh "$DEST"

#!/usr/bin/env bash
# gpurun bootstrap: make the training environment and the base model ready on an instance. Idempotent: a
# second run (or a warm image) costs a couple of seconds.
#
# usage: bash bootstrap.sh [--home DIR] [--model SPEC] [--model-file NAME] [--model-sha256 HEX] [--skip-install]
#   --home DIR       where gpurun keeps its things here (venv, uv, models); default ~/.gpurun
#   --model SPEC     the base model: a hub id (org/name, hub:org/name, or org/name/file.safetensors for one
#                    file), an http(s) URL (downloaded with resume), a file or folder already on this machine
#                    (gpurun uploaded it), or "none" (default; e.g. the tiny built-in test model)
#   --model-file N   file name for a URL download whose URL does not end in one
#   --model-sha256 H verify a URL download
#   --skip-install   only report the environment, install nothing
#
# The environment: if the image's python already has the training stack at the versions gpurun needs, nothing
# is installed. Otherwise uv (never conda) creates a venv with --system-site-packages so the image's CUDA
# torch stays in charge, and installs the rest into it; torch itself is never installed or replaced. A
# marker keyed on the requirements makes later runs instant.
#
# Overrides (mirrors, tests): GPURUN_PYTHON (interpreter), GPURUN_UV (uv binary), GPURUN_PIP_ARGS (extra args
# for `pip install uv`), GPURUN_UV_ARGS (extra args for `uv pip install`, e.g. --index-url or --no-index
# --find-links DIR), GPURUN_REQUIREMENTS, GPURUN_SYSTEM_REQUIREMENTS (what the image must provide),
# GPURUN_VENV, GPURUN_UV_INSTALLER_URL (uv's standalone installer, used when pip cannot install uv; empty
# disables it), GPURUN_CHECK_CUDA=0 (skip importing torch to report CUDA: saves ~2 s on a warm host).
#
# Output: progress for people on stderr; for gpurun, lines on stdout of the form
#   GPURUN_BOOTSTRAP phase=<probe|env|install|model|ready|error> status=<...> key=value ...
# (values shell-quoted). Exit codes: 0 ready, 2 usage or unusable model spec, 3 no usable python or torch,
# 4 environment install failed, 5 base model missing or download failed.
set -euo pipefail

DEFAULT_REQUIREMENTS="diffusers>=0.32 transformers>=4.45 peft>=0.13 accelerate>=0.34 bitsandbytes>=0.43 safetensors>=0.4 huggingface_hub>=0.26 numpy>=1.24 pillow>=10"
DEFAULT_SYSTEM_REQUIREMENTS="torch>=2.3"
# Never installed by gpurun: these come from the image, built for its CUDA.
IMAGE_PACKAGES="torch torchvision torchaudio triton"

HOME_DIR="${HOME:-/root}/.gpurun"
MODEL_SPEC="none"
MODEL_FILE=""
MODEL_SHA256=""
SKIP_INSTALL=0

emit() { # emit PHASE STATUS [key=value ...]
  local line="GPURUN_BOOTSTRAP phase=$1 status=$2" kv
  shift 2
  for kv in "$@"; do line+=" ${kv%%=*}=$(printf '%q' "${kv#*=}")"; done
  printf '%s\n' "$line"
}
log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { # die CODE MESSAGE
  emit error failed "code=$1" "message=$2"
  printf 'bootstrap: error: %s\n' "$2" >&2
  exit "$1"
}
now() { date +%s; }

while [ $# -gt 0 ]; do
  case "$1" in
    --home) [ $# -ge 2 ] || die 2 "--home needs a folder"; HOME_DIR="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || die 2 "--model needs a value"; MODEL_SPEC="$2"; shift 2 ;;
    --model-file) [ $# -ge 2 ] || die 2 "--model-file needs a name"; MODEL_FILE="$2"; shift 2 ;;
    --model-sha256) [ $# -ge 2 ] || die 2 "--model-sha256 needs a hex digest"; MODEL_SHA256="$2"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) die 2 "unknown argument: $1 (see --help)" ;;
  esac
done

REQUIREMENTS="${GPURUN_REQUIREMENTS-$DEFAULT_REQUIREMENTS}"
SYSTEM_REQUIREMENTS="${GPURUN_SYSTEM_REQUIREMENTS-$DEFAULT_SYSTEM_REQUIREMENTS}"
VENV="${GPURUN_VENV:-$HOME_DIR/venv}"
mkdir -p "$HOME_DIR" || die 2 "cannot create $HOME_DIR"

# Reports, as `key=value` lines, the python and whether each `name>=version` requirement is met. Stdlib only,
# and it does not import the packages (that takes seconds); only torch is imported, to report CUDA.
PROBE='
import importlib.metadata as md, os, re, sys
def release(text):
    m = re.match(r"\d+(\.\d+)*", text)
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()
print("python=%s" % sys.executable)
print("python_version=%d.%d.%d" % sys.version_info[:3])
missing = []
for req in sys.argv[1:]:
    name, _, need = req.partition(">=")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        missing.append(name); print("pkg_%s=missing" % name); continue
    ok = release(have) >= release(need) if need else True
    print("pkg_%s=%s" % (name, have))
    if not ok:
        missing.append("%s (%s < %s)" % (name, have, need))
check_cuda = os.environ.get("GPURUN_CHECK_CUDA", "1") != "0"
if check_cuda and any(r.partition(">=")[0] == "torch" for r in sys.argv[1:]) and "torch" not in [m.split()[0] for m in missing]:
    try:
        import torch
        print("cuda=%s" % ("true" if torch.cuda.is_available() else "false"))
        print("cuda_version=%s" % (torch.version.cuda or "none"))
    except Exception as exc:
        missing.append("torch (import failed: %s)" % str(exc).splitlines()[0][:80])
print("missing=%s" % ", ".join(missing))
'

probe() { # probe PYTHON REQS... -> sets PROBE_OUT; returns 0 when nothing is missing
  PROBE_OUT="$("$1" -c "$PROBE" "${@:2}" 2>/dev/null)" || return 2
  [ -z "$(probe_value missing)" ]
}
probe_value() { printf '%s\n' "$PROBE_OUT" | sed -n "s/^$1=//p" | head -n 1; }

find_python() { # sets BASE_PY
  if [ -n "${GPURUN_PYTHON:-}" ]; then
    command -v "$GPURUN_PYTHON" >/dev/null 2>&1 || die 3 "GPURUN_PYTHON=$GPURUN_PYTHON is not an executable"
    BASE_PY="$(command -v "$GPURUN_PYTHON")"
    return
  fi
  # sshd sessions often lack the image's ENV PATH (conda images keep python in /opt/conda/bin): look there too
  local candidate first=""
  for candidate in python3 /opt/conda/bin/python3 /usr/local/bin/python3 /usr/bin/python3 python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null || continue
    [ -n "$first" ] || first="$(command -v "$candidate")"
    if "$candidate" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
      BASE_PY="$(command -v "$candidate")"
      return
    fi
  done
  [ -n "$first" ] || die 3 "no python 3.9+ found (looked for python3 in PATH, /opt/conda/bin, /usr/local/bin, /usr/bin)"
  BASE_PY="$first"
}

env_hash() {
  "$BASE_PY" -c 'import hashlib, sys; print(hashlib.sha256("\n".join(sys.argv[1:]).encode()).hexdigest()[:16])' \
    "$BASE_PY" "$REQUIREMENTS" "$SYSTEM_REQUIREMENTS" "${GPURUN_UV_ARGS:-}"
}

find_uv() { # sets UV (an array)
  if [ -n "${GPURUN_UV:-}" ]; then UV=("$GPURUN_UV"); return; fi
  if command -v uv >/dev/null 2>&1; then UV=("$(command -v uv)"); return; fi
  if [ -x "$HOME_DIR/uv/bin/uv" ]; then UV=("$HOME_DIR/uv/bin/uv"); return; fi
  log "installing uv into $HOME_DIR/uv"
  # shellcheck disable=SC2086  # GPURUN_PIP_ARGS is a list of arguments
  if "$BASE_PY" -m pip --version >/dev/null 2>&1 &&
    "$BASE_PY" -m pip install --quiet --disable-pip-version-check --target "$HOME_DIR/uv" ${GPURUN_PIP_ARGS:-} uv >&2 &&
    [ -x "$HOME_DIR/uv/bin/uv" ]; then
    UV=("$HOME_DIR/uv/bin/uv"); return
  fi
  local installer="${GPURUN_UV_INSTALLER_URL-https://astral.sh/uv/install.sh}"
  [ -n "$installer" ] || die 4 "cannot install uv with pip, and the standalone installer is disabled"
  command -v curl >/dev/null 2>&1 || die 4 "cannot install uv: no pip in $BASE_PY and no curl"
  curl -LsSf "$installer" |
    env UV_UNMANAGED_INSTALL="$HOME_DIR/uv/bin" sh >&2 || die 4 "the uv installer failed"
  [ -x "$HOME_DIR/uv/bin/uv" ] || die 4 "the uv installer did not produce $HOME_DIR/uv/bin/uv"
  UV=("$HOME_DIR/uv/bin/uv")
}

install_env() {
  local started overrides constraints numpy
  started=$(now)
  emit install start "venv=$VENV"
  find_uv
  export UV_LINK_MODE="${UV_LINK_MODE:-copy}"  # the cache and the venv are often on different filesystems
  if [ ! -x "$VENV/bin/python" ]; then
    "${UV[@]}" venv --quiet --system-site-packages --python "$BASE_PY" "$VENV" >&2 ||
      die 4 "uv could not create the venv $VENV"
  fi
  # uv ignores --system-site-packages when resolving, so it would happily put a CPU torch from PyPI into the
  # venv over the image's CUDA build. An override with an impossible marker drops those dependencies.
  overrides="$HOME_DIR/overrides.txt"
  constraints="$HOME_DIR/constraints.txt"
  : > "$overrides"
  for pkg in $IMAGE_PACKAGES; do printf '%s; sys_platform == "never"\n' "$pkg" >> "$overrides"; done
  : > "$constraints"
  # keep numpy 1.x where the image's torch was built against it (its C extensions break on numpy 2)
  numpy="$("$BASE_PY" -c 'import importlib.metadata as m; print(m.version("numpy"))' 2>/dev/null || true)"
  case "$numpy" in 1.*) echo "numpy<2" >> "$constraints" ;; esac
  log "installing: $REQUIREMENTS"
  local extra=()
  [ ! -s "$constraints" ] || extra=(--constraint "$constraints")
  # shellcheck disable=SC2086  # word splitting intended: lists of requirements and arguments
  "${UV[@]}" pip install --python "$VENV/bin/python" --override "$overrides" ${extra[@]+"${extra[@]}"} \
    ${GPURUN_UV_ARGS:-} $REQUIREMENTS >&2 || die 4 "installing the training stack failed (uv pip install)"
  # shellcheck disable=SC2086
  probe "$VENV/bin/python" $SYSTEM_REQUIREMENTS $REQUIREMENTS ||
    die 4 "the new environment is still incomplete: $(probe_value missing)"
  touch "$VENV/.gpurun-ready-$HASH"
  emit install "done" "seconds=$(( $(now) - started ))"
}

# -- environment --------------------------------------------------------------------------------------------

find_python
HASH="$(env_hash)"
# shellcheck disable=SC2086
if [ -x "$VENV/bin/python" ] && [ -e "$VENV/.gpurun-ready-$HASH" ] &&
  probe "$VENV/bin/python" $SYSTEM_REQUIREMENTS $REQUIREMENTS; then
  PY="$VENV/bin/python"
  ENV_STATUS=cached
elif probe "$BASE_PY" $SYSTEM_REQUIREMENTS $REQUIREMENTS; then
  PY="$BASE_PY"
  ENV_STATUS=warm
else
  rc=0
  probe "$BASE_PY" $SYSTEM_REQUIREMENTS || rc=$?
  [ "$rc" -ne 2 ] || die 3 "$BASE_PY does not run"
  [ "$rc" -eq 0 ] || die 3 "the image's python ($BASE_PY) lacks what gpurun never installs: $(probe_value missing) — use a PyTorch CUDA image"
  [ "$SKIP_INSTALL" -eq 0 ] || die 4 "the environment is incomplete and --skip-install was given: missing $(probe_value missing)"
  install_env
  PY="$VENV/bin/python"
  ENV_STATUS=installed
fi
# PROBE_OUT describes $PY: every branch above ended with a successful probe of it
emit env "$ENV_STATUS" "python=$PY" "python_version=$(probe_value python_version)" \
  "torch=$(probe_value pkg_torch)" "cuda=$(probe_value cuda)" "diffusers=$(probe_value pkg_diffusers)" \
  "transformers=$(probe_value pkg_transformers)" "peft=$(probe_value pkg_peft)"
log "environment $ENV_STATUS: $PY"

# -- base model ---------------------------------------------------------------------------------------------

MODEL_DIR="$HOME_DIR/models"
MODEL_PATH=""

size_of() { "$PY" -c 'import os, sys
p = sys.argv[1]
print(os.path.getsize(p) if os.path.isfile(p) else sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs))' "$1"; }

sha256_of() { "$PY" -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
print(h.hexdigest())' "$1"; }

model_url() {
  local url="$1" name dest rc started auth=()
  name="$MODEL_FILE"
  if [ -z "$name" ]; then
    name="$(basename "${url%%[?#]*}")"
    case "$name" in *.*) ;; *) name="model.safetensors" ;; esac
  fi
  case "$name" in */*|""|.|..) die 2 "bad --model-file: $name" ;; esac
  dest="$MODEL_DIR/$name"
  mkdir -p "$MODEL_DIR"
  if [ -s "$dest" ]; then
    MODEL_PATH="$dest"; emit model exists "path=$dest" "bytes=$(size_of "$dest")"; return
  fi
  command -v curl >/dev/null 2>&1 || die 5 "curl is needed to download $url"
  # the Hugging Face token goes to Hugging Face only
  case "$url" in https://huggingface.co/*|https://*.huggingface.co/*)
    [ -z "${HF_TOKEN:-}" ] || auth=(-H "Authorization: Bearer $HF_TOKEN") ;;
  esac
  started=$(now)
  emit model start "kind=url" "url=$url" "path=$dest"
  rc=0
  curl -fL --retry 5 --retry-delay 3 --retry-connrefused --connect-timeout 30 -sS ${auth[@]+"${auth[@]}"} \
    -C - -o "$dest.part" "$url" || rc=$?
  if [ "$rc" -eq 33 ]; then # the server cannot resume: start over
    log "server does not support resuming; downloading from the start"
    rm -f "$dest.part"
    rc=0
    curl -fL --retry 5 --retry-delay 3 --retry-connrefused --connect-timeout 30 -sS ${auth[@]+"${auth[@]}"} \
      -o "$dest.part" "$url" || rc=$?
  fi
  [ "$rc" -eq 0 ] || die 5 "downloading $url failed (curl exit $rc); the partial file is kept for resuming"
  if [ -n "$MODEL_SHA256" ] && [ "$(sha256_of "$dest.part")" != "$MODEL_SHA256" ]; then
    rm -f "$dest.part"
    die 5 "the download of $url does not match --model-sha256"
  fi
  mv -f "$dest.part" "$dest"
  MODEL_PATH="$dest"
  emit model "done" "path=$dest" "bytes=$(size_of "$dest")" "seconds=$(( $(now) - started ))"
}

# Downloads only what training needs: one file when named; for a diffusers repo the configs, tokenizer,
# scheduler and one set of weights per component (the fp16 variant when there is one), no safety checker.
HUB_FETCH='
import os, re, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
spec, root = sys.argv[1], sys.argv[2]
parts = spec.split("/")
repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
target = os.path.join(root, repo.replace("/", "--"))
try:
    if filename:
        print(hf_hub_download(repo, filename, local_dir=target)); sys.exit(0)
    files = HfApi().list_repo_files(repo)
    if "model_index.json" in files:
        keep = ["model_index.json"]
        others = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema_only)[.-]")
        for comp in sorted({f.split("/")[0] for f in files if "/" in f} - {"safety_checker"}):
            inside = [f for f in files if f.startswith(comp + "/") and f.count("/") == 1]
            keep += [f for f in inside if f.endswith((".json", ".txt", ".model"))]
            weights = [f for f in inside if f.endswith(".safetensors")]
            fp16 = [f for f in weights if ".fp16." in f or ".fp16-" in f]
            keep += fp16 or [f for f in weights if not others.search(f)]
        print(snapshot_download(repo, allow_patterns=keep, local_dir=target))
    else:
        singles = [f for f in files if "/" not in f and f.endswith(".safetensors")]
        if len(singles) != 1:
            sys.stderr.write("%s has %d top-level .safetensors files (%s): name one as %s/FILE\n"
                             % (repo, len(singles), ", ".join(singles[:5]) or "none", repo))
            sys.exit(2)
        print(hf_hub_download(repo, singles[0], local_dir=target))
except SystemExit:
    raise
except Exception as exc:
    sys.stderr.write("%s: %s\n" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))
    sys.exit(1)
'

model_hub() {
  local spec="$1" out rc=0 started
  started=$(now)
  emit model start "kind=hub" "repo=$spec"
  mkdir -p "$MODEL_DIR"
  out="$("$PY" -c "$HUB_FETCH" "$spec" "$MODEL_DIR")" || rc=$?
  [ "$rc" -ne 2 ] || die 2 "cannot choose a file in $spec (see above)"
  [ "$rc" -eq 0 ] || die 5 "downloading $spec from the Hugging Face hub failed (gated models need HF_TOKEN)"
  MODEL_PATH="$(printf '%s\n' "$out" | tail -n 1)"
  emit model "done" "path=$MODEL_PATH" "bytes=$(size_of "$MODEL_PATH")" "seconds=$(( $(now) - started ))"
}

HUB_ID='^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(/[^[:space:]]+)?$'
case "$MODEL_SPEC" in
  ""|none|tiny-sd) emit model skip "spec=${MODEL_SPEC:-none}" ;;
  http://*|https://*) model_url "$MODEL_SPEC" ;;
  hub:*)
    [[ "${MODEL_SPEC#hub:}" =~ $HUB_ID ]] || die 2 "not a hub id: ${MODEL_SPEC#hub:} (expected org/name)"
    model_hub "${MODEL_SPEC#hub:}" ;;
  *)
    if [ -e "$MODEL_SPEC" ]; then
      [ -d "$MODEL_SPEC" ] || [ -s "$MODEL_SPEC" ] || die 5 "the model file $MODEL_SPEC is empty"
      MODEL_PATH="$(cd "$(dirname "$MODEL_SPEC")" && pwd)/$(basename "$MODEL_SPEC")"
      emit model exists "kind=file" "path=$MODEL_PATH" "bytes=$(size_of "$MODEL_PATH")"
    elif [[ "$MODEL_SPEC" == /* || "$MODEL_SPEC" == ./* || "$MODEL_SPEC" == ../* || "$MODEL_SPEC" == \~* ]]; then
      die 5 "the model file $MODEL_SPEC is not on this machine (gpurun uploads local models before bootstrap)"
    elif [[ "$MODEL_SPEC" =~ $HUB_ID ]]; then
      model_hub "$MODEL_SPEC"
    else
      die 2 "cannot understand the model spec '$MODEL_SPEC': expected a hub id (org/name), an http(s) URL, or a file"
    fi ;;
esac

emit ready ok "python=$PY" "model=$MODEL_PATH" "home=$HOME_DIR"

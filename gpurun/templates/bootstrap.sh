#!/usr/bin/env bash
# gpurun bootstrap: make the training environment and the base model ready on a box. Idempotent: a second run
# (or a warm image) costs a couple of seconds.
#
# usage: bash bootstrap.sh --home DIR --lock-dir DIR [--bundle DIR] [--model SPEC] [--model-files LIST]
#                          [--model-file NAME] [--model-sha256 HEX] [--skip-install]
#   --home DIR        where gpurun keeps its things on this machine (environments, uv, models); default ~/.gpurun
#   --lock-dir DIR    the folder with gpurun's locks (lock-py3.X.txt); the one for this machine's Python is used
#   --bundle DIR      the folder holding the gpurun package: enables the smoke check (import the stack, inject a
#                     LoRA into a tiny model, take one optimizer step) before the base model is downloaded
#   --model SPEC      the base model: a hub id (org/name, hub:org/name, or org/name/file.safetensors for one
#                     file), an http(s) URL (downloaded with resume), a file or folder already on this machine
#                     (gpurun uploaded it), or "none" (default; e.g. the tiny built-in test model)
#   --model-files L   for a hub repo: the space-separated files to fetch (the client chose them from the listing)
#   --model-file N    file name for a URL download whose URL does not end in one
#   --model-sha256 H  verify a URL download
#   --skip-install    only report the environment, install nothing
#
# The environment: the image's python keeps its own CUDA build of torch, which gpurun never installs or replaces.
# When that python already has every package the lock asks for directly, at exactly the locked version, it is
# used as it is ("warm"). Otherwise uv installs the whole lock, exactly and without resolving (--no-deps), into
# HOME/env/<hash>, a folder that goes first on PYTHONPATH ("installed"; "cached" on later runs). A folder on
# PYTHONPATH rather than a venv: it works the same over a system python, a conda python or a venv.
#
# Overrides (mirrors, tests): GPURUN_PYTHON (interpreter), GPURUN_UV (uv binary), GPURUN_PIP_ARGS (extra args
# for `pip install uv`), GPURUN_UV_ARGS (extra args for `uv pip install`, e.g. --index-url or --no-index
# --find-links DIR), GPURUN_UV_INSTALLER_URL (uv's standalone installer, used when pip cannot install uv; empty
# disables it), GPURUN_CHECK_CUDA=0 (skip importing torch to report CUDA: saves ~2 s on a warm host).
#
# Output: progress for people on stderr; for gpurun, lines on stdout of the form
#   GPURUN_BOOTSTRAP phase=<env|install|smoke|model|ready|error> status=<...> key=value ...
# (values shell-quoted). Exit codes: 0 ready, 2 usage or unusable model spec, 3 no usable python or torch (or no
# lock for this Python), 4 environment install failed, 5 base model missing or download failed, 6 the smoke
# check failed (the installed stack cannot train on this machine).
set -euo pipefail

HOME_DIR="${HOME:-/root}/.gpurun"
LOCK_DIR=""
BUNDLE=""
MODEL_SPEC="none"
MODEL_FILES=""
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
    --lock-dir) [ $# -ge 2 ] || die 2 "--lock-dir needs a folder"; LOCK_DIR="$2"; shift 2 ;;
    --bundle) [ $# -ge 2 ] || die 2 "--bundle needs a folder"; BUNDLE="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || die 2 "--model needs a value"; MODEL_SPEC="$2"; shift 2 ;;
    --model-files) [ $# -ge 2 ] || die 2 "--model-files needs a list"; MODEL_FILES="$2"; shift 2 ;;
    --model-file) [ $# -ge 2 ] || die 2 "--model-file needs a name"; MODEL_FILE="$2"; shift 2 ;;
    --model-sha256) [ $# -ge 2 ] || die 2 "--model-sha256 needs a hex digest"; MODEL_SHA256="$2"; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) die 2 "unknown argument: $1 (see --help)" ;;
  esac
done

[ -n "$LOCK_DIR" ] || die 2 "--lock-dir is required (the folder with gpurun's lock-py3.X.txt files)"
[ -d "$LOCK_DIR" ] || die 2 "--lock-dir $LOCK_DIR is not a folder"
[ -z "$BUNDLE" ] || [ -d "$BUNDLE/gpurun" ] || die 2 "--bundle $BUNDLE does not hold the gpurun package"
mkdir -p "$HOME_DIR" || die 2 "cannot create $HOME_DIR"

# Compares the installed distributions with a lock (stdlib only; nothing is imported but torch, for CUDA).
# argv: LOCK MODE, where MODE "direct" checks the lock's direct requirements and "all" every pin. Prints
# key=value lines; `missing=` lists what is absent or at another version (empty when all is well) and
# `image_missing=` what the image itself must provide. The first distribution of a name on sys.path counts,
# as it is the one an import finds.
PROBE='
import importlib.metadata as md, os, re, sys
lock_path, mode = sys.argv[1], sys.argv[2]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins, direct, image = {}, [], ""
with open(lock_path, encoding="utf-8") as handle:
    for line in handle:
        line = line.strip()
        if line.startswith("# gpurun-direct:"):
            direct = [norm(n) for n in line.split(":", 1)[1].split()]
        elif line.startswith("# gpurun-image-requires:"):
            image = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("==")
            pins[norm(name)] = rest.split("#")[0].split(";")[0].strip()
installed = {}
for dist in md.distributions():
    name = dist.metadata["Name"]
    if name:
        installed.setdefault(norm(name), dist.version)
def release(text):
    found = re.match(r"\d+(\.\d+)*", text)
    return tuple(int(p) for p in found.group(0).split(".")) if found else ()
print("python=%s" % sys.executable)
print("python_version=%d.%d.%d" % sys.version_info[:3])
image_missing = []
for req in image.split():
    name, _, floor = req.partition(">=")
    have = installed.get(norm(name))
    if have is None:
        image_missing.append(name)
    elif floor and release(have) < release(floor):
        image_missing.append("%s (%s < %s)" % (name, have, floor))
torch = installed.get("torch")
print("torch=%s" % (torch or "missing"))
if torch and os.environ.get("GPURUN_CHECK_CUDA", "1") != "0":
    try:
        import torch as t
        print("cuda=%s" % ("true" if t.cuda.is_available() else "false"))
        print("cuda_version=%s" % (t.version.cuda or "none"))
    except Exception as exc:
        image_missing.append("torch (import failed: %s)" % str(exc).splitlines()[0][:120])
wanted = direct if mode == "direct" else list(pins)
missing = []
for name in wanted:
    have = installed.get(name)
    if have != pins.get(name):
        missing.append("%s %s (locked %s)" % (name, have or "missing", pins.get(name)))
for name in direct:
    print("pkg_%s=%s" % (name.replace("-", "_"), installed.get(name, "missing")))
print("image_missing=%s" % ", ".join(image_missing))
print("missing=%s" % ", ".join(missing))
'

probe() { # probe PYTHON MODE [PYTHONPATH] -> sets PROBE_OUT; returns 0 when nothing is missing, 2 if python fails
  PROBE_OUT="$(PYTHONPATH="${3:-}" "$1" -c "$PROBE" "$LOCK" "$2" 2>/dev/null)" || return 2
  [ -z "$(probe_value missing)" ] && [ -z "$(probe_value image_missing)" ]
}
probe_value() { printf '%s\n' "$PROBE_OUT" | sed -n "s/^$1=//p" | head -n 1; }
stack_versions() { # "diffusers=X transformers=Y ..." from the last probe
  printf '%s\n' "$PROBE_OUT" | sed -n 's/^pkg_\([^=]*\)=\(.*\)$/\1=\2/p' | tr '\n' ' ' | sed 's/ $//'
}

find_python() { # sets BASE_PY: the image's python that has torch
  if [ -n "${GPURUN_PYTHON:-}" ]; then
    command -v "$GPURUN_PYTHON" >/dev/null 2>&1 || die 3 "GPURUN_PYTHON=$GPURUN_PYTHON is not an executable"
    BASE_PY="$(command -v "$GPURUN_PYTHON")"
    return
  fi
  # sshd sessions often lack the image's ENV PATH: conda images keep python in /opt/conda/bin, vastai images
  # in /venv/main/bin, and runpod's ubuntu 22.04 images have torch in `python` (3.12) but not in `python3` (3.10)
  local candidate first=""
  for candidate in python3 /opt/conda/bin/python3 /venv/main/bin/python3 /usr/local/bin/python3 /usr/bin/python3 \
    python /usr/local/bin/python; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null || continue
    [ -n "$first" ] || first="$(command -v "$candidate")"
    if "$candidate" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null; then
      BASE_PY="$(command -v "$candidate")"
      return
    fi
  done
  [ -n "$first" ] || die 3 "no python 3.9+ found (looked for python3 in PATH, /opt/conda/bin, /venv/main/bin, /usr/local/bin, /usr/bin)"
  BASE_PY="$first"
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

install_env() { # installs the lock into $TARGET
  local started partial="$TARGET.partial"
  started=$(now)
  emit install start "target=$TARGET" "lock=$(basename "$LOCK")"
  find_uv
  export UV_LINK_MODE="${UV_LINK_MODE:-copy}"  # the cache and the target are often on different filesystems
  rm -rf "$partial"
  log "installing $(grep -c '==' "$LOCK") locked packages into $TARGET"
  # --no-deps: the lock is the complete closure (torch excepted: the image's); nothing is resolved on the box
  # shellcheck disable=SC2086  # GPURUN_UV_ARGS is a list of arguments
  "${UV[@]}" pip install --python "$BASE_PY" --target "$partial" --no-deps ${GPURUN_UV_ARGS:-} -r "$LOCK" >&2 ||
    die 4 "installing the locked training stack ($(basename "$LOCK")) failed (uv pip install)"
  probe "$BASE_PY" all "$partial" ||
    die 4 "the new environment does not match the lock: $(probe_value missing)$(probe_value image_missing)"
  rm -rf "$TARGET"
  mv "$partial" "$TARGET"
  touch "$TARGET/.gpurun-ready"
  emit install "done" "seconds=$(( $(now) - started ))"
}

# -- environment --------------------------------------------------------------------------------------------

find_python
PY_MINOR="$("$BASE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || die 3 "$BASE_PY does not run"
LOCK="$LOCK_DIR/lock-py$PY_MINOR.txt"
if [ ! -f "$LOCK" ]; then
  known="$(cd "$LOCK_DIR" && ls lock-py*.txt 2>/dev/null | sed 's/^lock-py\(.*\)\.txt$/\1/' | tr '\n' ' ')"
  die 3 "$BASE_PY is Python $PY_MINOR, and gpurun's training stack is locked for Python ${known:-(none)}only: use an image with one of those"
fi
HASH="$("$BASE_PY" -c 'import hashlib, sys; print(hashlib.sha256("\n".join(sys.argv[1:]).encode() + open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$LOCK" "$BASE_PY" "$PY_MINOR")"
TARGET="$HOME_DIR/env/$HASH"
PYPATH=""
rc=0
probe "$BASE_PY" direct || rc=$?
[ "$rc" -ne 2 ] || die 3 "$BASE_PY does not run"
[ -z "$(probe_value image_missing)" ] ||
  die 3 "the image's python ($BASE_PY) lacks what gpurun never installs: $(probe_value image_missing) — use a PyTorch CUDA image"
if [ "$rc" -eq 0 ]; then
  ENV_STATUS=warm
elif [ -e "$TARGET/.gpurun-ready" ] && probe "$BASE_PY" all "$TARGET"; then
  ENV_STATUS=cached
  PYPATH="$TARGET"
else
  [ "$SKIP_INSTALL" -eq 0 ] || die 4 "the environment does not match the lock and --skip-install was given: $(probe_value missing)"
  log "the image's packages differ from gpurun's lock: $(probe_value missing)"
  install_env
  ENV_STATUS=installed
  PYPATH="$TARGET"
fi
probe "$BASE_PY" direct "$PYPATH" || true  # PROBE_OUT now describes the environment the runner gets
emit env "$ENV_STATUS" "python=$BASE_PY" "pythonpath=$PYPATH" "python_version=$(probe_value python_version)" \
  "torch=$(probe_value torch)" "cuda=$(probe_value cuda)" "lock=$(basename "$LOCK")" "stack=$(stack_versions)"
log "environment $ENV_STATUS: $BASE_PY${PYPATH:+ with $PYPATH first on PYTHONPATH}"

# -- smoke check --------------------------------------------------------------------------------------------

if [ -n "$BUNDLE" ]; then
  SMOKE_MARK="${PYPATH:-$HOME_DIR}/.gpurun-smoke-ok-$HASH"
  if [ -e "$SMOKE_MARK" ]; then
    emit smoke cached
  else
    started=$(now)
    emit smoke start
    rc=0
    out="$(PYTHONPATH="$BUNDLE${PYPATH:+:$PYPATH}" PYTHONNOUSERSITE=1 "$BASE_PY" -m gpurun.runner.smoke 2>"$HOME_DIR/smoke.stderr" | tail -n 1)" || rc=$?
    if [ "$rc" -ne 0 ]; then
      reason="$(grep '^GPURUN_SMOKE ' "$HOME_DIR/smoke.stderr" | tail -n 1 | sed 's/^GPURUN_SMOKE //')"
      [ -n "$reason" ] || reason="$(tail -n 1 "$HOME_DIR/smoke.stderr")"
      die 6 "the training stack cannot train on this machine: ${reason:-exit $rc} [$(stack_versions) torch=$(probe_value torch)]"
    fi
    touch "$SMOKE_MARK"
    emit smoke ok "seconds=$(( $(now) - started ))" "report=$out"
  fi
fi

# -- base model ---------------------------------------------------------------------------------------------

MODEL_DIR="$HOME_DIR/models"
MODEL_PATH=""

size_of() { "$BASE_PY" -c 'import os, sys
p = sys.argv[1]
print(os.path.getsize(p) if os.path.isfile(p) else sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs))' "$1"; }

# A resumable download with the standard library (images do not all have curl): Range requests continue a
# .part file; a server that ignores Range starts over; transient failures retry with backoff; HF_TOKEN goes
# to huggingface.co only and never follows a redirect to another host. Prints progress lines to stderr.
# argv: URL DEST [SHA256]. Exit 1 on a permanent failure (the message on stderr), 2 on a checksum mismatch.
DOWNLOAD='
import hashlib, os, sys, time, urllib.error, urllib.parse, urllib.request
url, dest = sys.argv[1], sys.argv[2]
sha = sys.argv[3] if len(sys.argv) > 3 else ""
part = dest + ".part"
host = urllib.parse.urlsplit(url).hostname or ""
headers = {"User-Agent": "gpurun-bootstrap/1"}
token = os.environ.get("HF_TOKEN", "")
if token and (host == "huggingface.co" or host.endswith(".huggingface.co")):
    headers["Authorization"] = "Bearer " + token
class SameHostAuth(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, hdrs, newurl):
        new = super().redirect_request(req, fp, code, msg, hdrs, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).hostname != urllib.parse.urlsplit(req.full_url).hostname:
            new.headers.pop("Authorization", None)
            new.unredirected_hdrs.pop("Authorization", None)
        return new
opener = urllib.request.build_opener(SameHostAuth)
def fail(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)
delay, last_report = 2.0, 0.0
for attempt in range(1, 8):
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers=dict(headers, **({"Range": "bytes=%d-" % have} if have else {})))
    try:
        with opener.open(request, timeout=60) as response:
            if have and response.status != 206:
                have = 0  # the server ignored the Range header: start over
            total = response.headers.get("Content-Length")
            total = have + int(total) if total and total.isdigit() else None
            done = have
            with open(part, "ab" if have else "wb") as out:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if time.monotonic() - last_report > 10:
                        last_report = time.monotonic()
                        print("GPURUN_BOOTSTRAP phase=model status=progress bytes=%d total=%s" % (done, total or "''"),
                              flush=True)
            if total is not None and done < total:
                raise OSError("connection closed after %d of %d bytes" % (done, total))
        break
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            break  # nothing left to fetch: the .part file is complete
        if exc.code in (401, 403):
            fail("HTTP %d: the server refused access to %s (a gated or private model needs HF_TOKEN)" % (exc.code, url))
        if 400 <= exc.code < 500 and exc.code not in (408, 425, 429):
            fail("HTTP %d for %s" % (exc.code, url))
        error = "HTTP %d" % exc.code
    except (urllib.error.URLError, OSError) as exc:
        error = str(getattr(exc, "reason", exc))
    if attempt == 7:
        fail("downloading %s failed after %d attempts: %s" % (url, attempt, error))
    sys.stderr.write("download attempt %d failed (%s); retrying in %.0f s\n" % (attempt, error, delay))
    time.sleep(delay)
    delay = min(delay * 2, 60)
if sha:
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha:
        os.remove(part)
        fail("the download of %s does not match --model-sha256" % url, 2)
os.replace(part, dest)
'

model_url() {
  local url="$1" name dest rc=0 started
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
  started=$(now)
  emit model start "kind=url" "url=$url" "path=$dest"
  "$BASE_PY" -c "$DOWNLOAD" "$url" "$dest" "$MODEL_SHA256" || rc=$?
  [ "$rc" -ne 2 ] || die 5 "the download of $url does not match --model-sha256"
  [ "$rc" -eq 0 ] || die 5 "downloading $url failed (see above); a partial file is kept for resuming"
  MODEL_PATH="$dest"
  emit model "done" "path=$dest" "bytes=$(size_of "$dest")" "seconds=$(( $(now) - started ))"
}

# Downloads one named file, the files the client chose (--model-files), or a repo's single top-level
# checkpoint. The client resolves the repo on the laptop before renting and passes the exact list.
HUB_FETCH='
import os, sys
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
spec, root, chosen = sys.argv[1], sys.argv[2], sys.argv[3].split()
parts = spec.split("/")
repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
target = os.path.join(root, repo.replace("/", "--"))
try:
    if filename:
        print(hf_hub_download(repo, filename, local_dir=target)); sys.exit(0)
    if chosen:
        snapshot_download(repo, allow_patterns=chosen, local_dir=target)
        print(target if len(chosen) > 1 else os.path.join(target, chosen[0])); sys.exit(0)
    singles = [f for f in HfApi().list_repo_files(repo) if "/" not in f and f.endswith(".safetensors")]
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
  # the locked stack's huggingface_hub first; the box's own PYTHONPATH (if any) after it
  local path="$PYPATH"
  [ -z "${PYTHONPATH:-}" ] || path="${path:+$path:}$PYTHONPATH"
  out="$(PYTHONPATH="$path" "$BASE_PY" -c "$HUB_FETCH" "$spec" "$MODEL_DIR" "$MODEL_FILES")" || rc=$?
  [ "$rc" -ne 2 ] || die 2 "cannot choose a file in $spec (see above)"
  [ "$rc" -eq 0 ] || die 5 "downloading $spec from the Hugging Face hub failed (gated models need HF_TOKEN)"
  MODEL_PATH="$(printf '%s\n' "$out" | tail -n 1)"
  emit model "done" "path=$MODEL_PATH" "bytes=$(size_of "$MODEL_PATH")" "seconds=$(( $(now) - started ))"
}

HUB_ID='^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(/[^[:space:]]+)?$'
case "$MODEL_SPEC" in
  ""|none|tiny-sd|tiny-sdxl) emit model skip "spec=${MODEL_SPEC:-none}" ;;
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

emit ready ok "python=$BASE_PY" "pythonpath=$PYPATH" "model=$MODEL_PATH" "home=$HOME_DIR"

#!/usr/bin/env bash
# Build Triton's native ONNX Runtime backend (r24.10, CPU) for the tritonserver 2.51 that the
# nvidia-pytriton wheel carries, into build/triton-backend/backends/onnxruntime/:
#   libtriton_onnxruntime.so (built here) + libonnxruntime.so.1 (ONNX Runtime, beside it).
#
#   scripts/build_triton_backend.sh          (or `make triton-backend`)
#
# Sources: ../shared/vendor/triton-r24.10 when present (TRITON_VENDOR overrides; see its
# SOURCE.md), else `git clone --branch r24.10` of the four upstream repositories. ONNX Runtime:
# the library inside the Python onnxruntime wheel of poetry.lock (the very binary in-process
# inference runs, so served and in-process figures compare one runtime), with the vendored 1.21.0
# C API headers (older headers work with a newer library; never the reverse); without the vendor
# folder, the headers of ONNX Runtime's own release archive of that version.
# Build tools (cmake, g++, rapidjson-dev, patchelf) come from `make triton-build-deps` (root).
# Idempotent: a stamp of every input is kept; a second run with the same inputs does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

TRITON_TAG=r24.10
VENDOR="${TRITON_VENDOR:-../shared/vendor/triton-${TRITON_TAG}}"
OUT="$(realpath -m "${TRITON_BACKEND_DIR:-build/triton-backend}")"
DOWNLOADS=build/triton-backend/downloads  # kept in the checkout, whatever OUT is
PYTHON="${PYTHON:-.venv/bin/python}"
UPSTREAM=https://github.com/triton-inference-server
ORT_RELEASES=https://github.com/microsoft/onnxruntime/releases/download
REPOS=(onnxruntime_backend backend core common)
DEPS_HINT="run \`make triton-build-deps\` (as root: apt-get install cmake g++ rapidjson-dev patchelf)"

fail() {
    echo "error: build_triton_backend: $*" >&2
    exit 1
}

need_tool() {
    command -v "$1" >/dev/null || fail "$1 is not installed; $DEPS_HINT"
}

need_tool cmake
need_tool g++
need_tool patchelf
[[ -f /usr/include/rapidjson/document.h ]] || fail "rapidjson headers are missing; $DEPS_HINT"
[[ -x "$PYTHON" ]] || fail "$PYTHON is missing; run \`make setup\` first"
# Two libraries come from wheels in .venv, one line each (empty when the wheel is missing):
# - ONNX Runtime's, the runtime `infer`, `evaluate` and the benchmarks' in-process rows use;
# - libtritonserver, which the pytriton wheel renames (auditwheel): the backend must name that copy.
mapfile -t WHEEL_LIBS < <("$PYTHON" - <<'EOF'
import importlib.util
from pathlib import Path


def first(package: str, folder: str, pattern: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None:
        return ""
    root = Path(next(iter(spec.submodule_search_locations)))
    return next((str(path) for path in sorted((root / folder).glob(pattern))), "")


print(first("onnxruntime", "capi", "libonnxruntime.so.*"))
print(Path(first("pytriton", "../nvidia_pytriton.libs", "libtritonserver*.so*")).name)
EOF
)
ORT_LIBRARY="${WHEEL_LIBS[0]:-}"
SERVER_LIB="${WHEEL_LIBS[1]:-}"
[[ -f "$ORT_LIBRARY" ]] || fail "the Python onnxruntime wheel (libonnxruntime.so) is missing; run \`make setup\`"
ORT_VERSION="${ORT_LIBRARY##*/libonnxruntime.so.}"
[[ -n "$SERVER_LIB" ]] || fail "the nvidia-pytriton wheel (libtritonserver) is missing; run \`make setup\`"

if [[ -d "$VENDOR" ]]; then
    SOURCE_ID="vendor $(cat "$VENDOR"/*.tar.gz "$VENDOR"/*.deb | sha256sum | cut -c1-16)"
else
    need_tool git
    SOURCE_ID="upstream $TRITON_TAG"
fi
STAMP_TEXT="$SOURCE_ID; ort $ORT_VERSION; $SERVER_LIB; $(sha256sum "$0" | cut -c1-16)"
TARGET="$OUT/backends/onnxruntime"
if [[ -f "$TARGET/libtriton_onnxruntime.so" && "$(cat "$OUT/stamp" 2>/dev/null)" == "$STAMP_TEXT" ]]; then
    echo "triton backend: up to date ($TARGET)"
    exit 0
fi

started=$(date +%s)
WORK="$OUT/work"
rm -rf "$WORK" "$OUT/stamp"
mkdir -p "$WORK/src" "$WORK/ort/include" "$WORK/ort/lib" "$DOWNLOADS"

# --- sources --------------------------------------------------------------------------------
for repo in "${REPOS[@]}"; do
    if [[ -d "$VENDOR" ]]; then
        mkdir -p "$WORK/src/$repo"
        tar xzf "$VENDOR/$repo-$TRITON_TAG.tar.gz" -C "$WORK/src/$repo" --strip-components=1
    else
        git clone --quiet --depth 1 --branch "$TRITON_TAG" "$UPSTREAM/$repo.git" "$WORK/src/$repo" ||
            fail "cannot clone $UPSTREAM/$repo (branch $TRITON_TAG): no network? put the sources in $VENDOR"
    fi
done
# common always adds its tests, which download googletest: skipped (the build is offline).
sed -i 's/^add_subdirectory(test)/# add_subdirectory(test)  (skipped: downloads googletest)/' \
    "$WORK/src/common/src/CMakeLists.txt"

# --- ONNX Runtime: headers and library --------------------------------------------------------
if [[ -d "$VENDOR" ]]; then
    need_tool dpkg-deb
    dpkg-deb -x "$VENDOR"/libonnxruntime-dev_*_amd64.deb "$WORK/deb"
    cp -r "$WORK/deb/usr/include/onnxruntime/." "$WORK/ort/include/"
else
    archive="$DOWNLOADS/onnxruntime-linux-x64-$ORT_VERSION.tgz"
    if [[ ! -f "$archive" ]]; then
        curl -fsSL -o "$archive.tmp" "$ORT_RELEASES/v$ORT_VERSION/onnxruntime-linux-x64-$ORT_VERSION.tgz" ||
            fail "cannot download ONNX Runtime $ORT_VERSION's release archive (no network?)"
        mv "$archive.tmp" "$archive"
    fi
    tar xzf "$archive" -C "$WORK" "onnxruntime-linux-x64-$ORT_VERSION/include"
    cp -r "$WORK/onnxruntime-linux-x64-$ORT_VERSION/include/." "$WORK/ort/include/"
fi
cp "$ORT_LIBRARY" "$WORK/ort/lib/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$WORK/ort/lib/libonnxruntime.so"

# --- configure, build, install ----------------------------------------------------------------
cmake -S "$WORK/src/onnxruntime_backend" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$WORK/install" \
    -DTRITON_ENABLE_GPU=OFF -DTRITON_ENABLE_ONNXRUNTIME_TENSORRT=OFF \
    -DTRITON_ENABLE_ONNXRUNTIME_OPENVINO=OFF \
    -DTRITON_ONNXRUNTIME_INCLUDE_PATHS="$WORK/ort/include" \
    -DTRITON_ONNXRUNTIME_LIB_PATHS="$WORK/ort/lib" \
    -DFETCHCONTENT_FULLY_DISCONNECTED=ON \
    -DFETCHCONTENT_SOURCE_DIR_REPO-COMMON="$WORK/src/common" \
    -DFETCHCONTENT_SOURCE_DIR_REPO-CORE="$WORK/src/core" \
    -DFETCHCONTENT_SOURCE_DIR_REPO-BACKEND="$WORK/src/backend" >"$WORK/cmake.log" 2>&1 ||
    fail "cmake configure failed: see $WORK/cmake.log ($(grep -m1 'Error' "$WORK/cmake.log" || true))"
cmake --build "$WORK/build" --target install -j "$(nproc)" >"$WORK/build.log" 2>&1 ||
    fail "the build failed: see $WORK/build.log ($(grep -m1 'error' "$WORK/build.log" || true))"

built=$(find "$WORK/install" -name libtriton_onnxruntime.so | head -n1)
patchelf --replace-needed libtritonserver.so "$SERVER_LIB" "$built"
staging="$OUT/backends/.onnxruntime.tmp"
rm -rf "$staging"
mkdir -p "$staging"
cp "$built" "$WORK/ort/lib/libonnxruntime.so.1" "$staging/"
rm -rf "$TARGET"
mv "$staging" "$TARGET"
rm -rf "$WORK"
echo "$STAMP_TEXT" >"$OUT/stamp"
echo "triton backend: built $TARGET (ONNX Runtime $ORT_VERSION) in $(($(date +%s) - started)) s"

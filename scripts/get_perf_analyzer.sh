#!/usr/bin/env bash
# NVIDIA's perf_analyzer (the client Triton's users benchmark with) into build/perf_analyzer/:
# the binary from the tritonclient 2.41.0 wheel, taken out with `pip download --no-deps` and
# unzip rather than installed beside the locked tritonclient. It needs libb64.so.0d and
# libcudart.so.12: links to the renamed copies the nvidia-pytriton wheel carries.
#   scripts/get_perf_analyzer.sh   (or `make perf-analyzer`); idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=2.41.0
DEST=build/perf_analyzer
PYTHON="${PYTHON:-.venv/bin/python}"
BINARY="$DEST/bin/perf_analyzer"

fail() {
    echo "error: get_perf_analyzer: $*" >&2
    exit 1
}

if [[ -x "$BINARY" && -e "$DEST/lib/libb64.so.0d" && -e "$DEST/lib/libcudart.so.12" ]]; then
    echo "perf_analyzer: up to date ($BINARY)"
    exit 0
fi
[[ -x "$PYTHON" ]] || fail "$PYTHON is missing; run \`make setup\` first"
command -v unzip >/dev/null || fail "unzip is not installed; run \`make triton-build-deps\`"
LIBS=$("$PYTHON" -c 'import importlib.util, pathlib; spec = importlib.util.find_spec("pytriton"); print(pathlib.Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs" if spec else "")')
[[ -d "$LIBS" ]] || fail "the nvidia-pytriton wheel (its bundled libraries) is missing; run \`make setup\`"
mkdir -p "$DEST/downloads" "$DEST/bin" "$DEST/lib"
wheel=$(find "$DEST/downloads" -name "tritonclient-$VERSION-*.whl" | head -n1)
if [[ -z "$wheel" ]]; then
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux1_x86_64 "tritonclient==$VERSION" -d "$DEST/downloads" ||
        fail "cannot download the tritonclient $VERSION wheel with pip (index unreachable?)"
    wheel=$(find "$DEST/downloads" -name "tritonclient-$VERSION-*.whl" | head -n1)
fi
unzip -o -q -j "$wheel" "tritonclient-$VERSION.data/data/bin/perf_analyzer" -d "$DEST/bin"
chmod +x "$BINARY"
for name in libb64.so.0d libcudart.so.12; do
    stem=${name%%.so*}
    copy=$(find "$LIBS" -name "$stem-*.so*" | head -n1)
    [[ -n "$copy" ]] || fail "$stem is not in $LIBS"
    ln -sf "$(realpath "$copy")" "$DEST/lib/$name"
done
echo "perf_analyzer: $BINARY (tritonclient $VERSION; run with LD_LIBRARY_PATH=$DEST/lib)"

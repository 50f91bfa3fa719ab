#!/usr/bin/env bash
# fuzz/run.sh SECONDS [CORPUS_DIR]: build needle._C with clang and
# -fsanitize=fuzzer-no-link,address,undefined into fuzz/_build (the in-place
# build is left alone) and run fuzz/fuzz_needle.py under atheris for SECONDS.
# Crashes land in fuzz/findings/. `make fuzz FUZZ_SECONDS=N` calls this.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
corpus=${2:-fuzz/corpus}
build=fuzz/_build
py=${PYTHON:-python3}
mkdir -p "$build" fuzz/findings "$corpus"
if [ ! -f "$build/.stamp" ] || [ -n "$(find csrc -newer "$build/.stamp" -print -quit)" ]; then
    touch "$build/.stamp.new"  # before the build: a source edited during it rebuilds next time
    NEEDLE_ASAN=1 NEEDLE_CUDA=0 CC=clang LDSHARED="clang -shared -pthread" \
        CFLAGS="-fsanitize=fuzzer-no-link -Wno-unused-command-line-argument" \
        "$py" setup.py -q build_ext --build-lib "$build" --build-temp "$build/tmp" --force
    mv "$build/.stamp.new" "$build/.stamp"
fi
# The Python package beside the instrumented extension.
(cd needle && find . -name '*.py' -exec install -D -m 644 {} "../$build/needle/{}" \;)
atheris_dir=$("$py" -c 'import atheris, os; print(os.path.dirname(atheris.path()) if
    os.path.isfile(atheris.path()) else atheris.path())')
export PYTHONPATH="$PWD/$build" PYTHONMALLOC=malloc
export LD_PRELOAD="$atheris_dir/asan_with_fuzzer.so"
# Leaks are LeakSanitizer's business in `make asan`; big legal allocations
# return NULL (MemoryError) instead of taking the machine's memory.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:max_allocation_size_mb=512
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
shift $(( $# > 2 ? 2 : $# ))
exec "$py" fuzz/fuzz_needle.py -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 \
    -artifact_prefix=fuzz/findings/ -print_final_stats=1 "$corpus" "$@"

# needle: short names for the common tasks. `make demo` and `make test` do all
# the set-up they need on a fresh machine (Python packages, in-place build).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := build/.deps-stamp
ASAN_LIB = $(shell gcc -print-file-name=libasan.so)

.PHONY: all deps build test asan bench demo demo-cnn demo-lm data ndarray-demo clean
.PHONY: mpi bench-distributed demo-lm-transformer
.PHONY: proptest fuzz fuzz-deps soak

all: build

$(STAMP): requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	@mkdir -p build && touch $(STAMP)

deps: $(STAMP)

build: deps
	$(PYTHON) setup.py -q build_ext --inplace

# The suite, then the CUDA kernels' cases under the CUDA emulator (cuda-emu below:
# about 2.5 minutes here; a GPU, where there is one, runs them in cuda-check).
test: mpi build notebook-deps
	$(PYTHON) -m pytest -q tests
	$(MAKE) --no-print-directory cuda-emu

# OpenMPI for needle.distributed and its tests (Debian's openmpi-bin and
# libopenmpi-dev, with apt-get where it exists; mpi4py comes from
# requirements-dev.txt). Without either, the multi-rank tests skip and say why.
mpi:
	@command -v mpirun >/dev/null || { command -v apt-get >/dev/null && \
	  apt-get update -qq && apt-get install -y -qq openmpi-bin libopenmpi-dev; } || \
	  echo "make mpi: no OpenMPI and no apt-get; the multi-rank tests will skip"

# The extension built with AddressSanitizer + UBSan and the suite run under it,
# LeakSanitizer on (.ci/lsan.supp: CPython's own allocations, each explained);
# the normal build is restored afterwards. Big legal allocations that cannot be
# met return NULL (MemoryError) as they do without ASan.
ASAN_OPTIONS_RUN = detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
LSAN_OPTIONS_RUN = suppressions=$(CURDIR)/.ci/lsan.supp:print_suppressions=0:use_tls=0
ASAN_TESTS ?= tests
# The interpreter itself, not a wrapper script (a shell under LD_PRELOAD leaks).
PY_EXE = $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
# The sanitizer build's -O1 contracts no multiply-adds, which the matmul does not need:
# its fused multiply-adds are explicit (Note [One chain per element], cpu_matmul.h).
# NEEDLE_CUDA=0: only needle._C is rebuilt (twice); needle._cuda, nvcc's code that no
# sanitizer sees, stays as `make build` left it (it saves nvcc's minutes each way).
ASAN_BUILD = NEEDLE_CUDA=0 $(PYTHON) setup.py -q build_ext --inplace --force
asan: build
	NEEDLE_ASAN=1 $(ASAN_BUILD)
	LD_PRELOAD=$(ASAN_LIB) PYTHONMALLOC=malloc NEEDLE_ASAN_RUN=1 \
	  ASAN_OPTIONS=$(ASAN_OPTIONS_RUN) LSAN_OPTIONS=$(LSAN_OPTIONS_RUN) \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(PY_EXE) -m pytest -q -p no:cacheprovider $(ASAN_TESTS); \
	  status=$$?; $(ASAN_BUILD); exit $$status

# Issue 13. proptest: the property tests with the big hypothesis profile (the
# suite runs them with the small, deterministic "ci" one) and the 1,000,000-op
# chain. fuzz: atheris over the C entry points for FUZZ_SECONDS at nice 19
# (fuzz/README.md), clang installed here if missing. soak: benchmarks/soak.py.
FUZZ_SECONDS ?= 60
proptest: build
	HYPOTHESIS_PROFILE=big NEEDLE_SLOW=1 $(PYTHON) -m pytest -q tests/test_property_ndarray.py \
	  tests/test_property_autograd.py tests/test_limits.py

fuzz-deps: deps
	$(PIP) install -q -r fuzz/requirements.txt
	@command -v clang >/dev/null || { command -v apt-get >/dev/null || \
	  { echo "make fuzz needs clang (apt-get install clang)"; exit 1; }; \
	  apt-get update -qq && apt-get install -y -qq clang; }

fuzz: fuzz-deps
	nice -n 19 fuzz/run.sh $(FUZZ_SECONDS)

soak: build
	$(PYTHON) benchmarks/soak.py

# bench_ndarray.py: each library in its own process, 1 and 2 threads. Each
# benchmark's figures go to benchmarks/results/ as JSON beside its printed
# table (the text tables of those without --json), and plot.py draws the PNGs
# that README.md's performance section shows. `make bench BENCH_QUICK=1` is
# the few-minute version (the --quick of those that have one).
BENCH_OUT := benchmarks/results
BENCH_QUICK ?=
BQ = $(if $(BENCH_QUICK),--quick)
bench: mpi build data
	$(PYTHON) benchmarks/bench_ndarray.py $(BQ) --json $(BENCH_OUT)/bench_ndarray.json
	$(PYTHON) benchmarks/bench_autograd.py $(BQ) --json $(BENCH_OUT)/bench_autograd.json
	$(PYTHON) benchmarks/bench_train_mlp.py --json $(BENCH_OUT)/bench_train_mlp.json
	$(PYTHON) benchmarks/bench_seq_step.py --json $(BENCH_OUT)/bench_seq_step.json
	$(PYTHON) benchmarks/plot.py $(BENCH_OUT)/bench_ndarray.json \
	  $(BENCH_OUT)/bench_train_mlp.json $(BENCH_OUT)/bench_seq_step.json
	$(PYTHON) benchmarks/bench_conv_seq.py $(BQ) --json $(BENCH_OUT)/bench_conv_seq.json \
	  > $(BENCH_OUT)/bench_conv_seq.txt; \
	  status=$$?; cat $(BENCH_OUT)/bench_conv_seq.txt; exit $$status
	$(PYTHON) benchmarks/bench_transformer.py $(BQ) > $(BENCH_OUT)/bench_transformer.txt; \
	  status=$$?; cat $(BENCH_OUT)/bench_transformer.txt; exit $$status
	$(PYTHON) benchmarks/bench_interop.py $(BQ) > $(BENCH_OUT)/bench_interop.txt; \
	  status=$$?; cat $(BENCH_OUT)/bench_interop.txt; exit $$status
	$(PYTHON) benchmarks/bench_distributed.py > $(BENCH_OUT)/bench_distributed.txt; \
	  status=$$?; cat $(BENCH_OUT)/bench_distributed.txt; exit $$status

bench-distributed: mpi build data
	$(PYTHON) benchmarks/bench_distributed.py

# The main job: Fashion-MNIST from Debian's dataset-fashion-mnist (installed
# here if missing), MLPResNet trained with a progress bar, final accuracy,
# curves and a checkpoint under checkpoints/.
FASHION_DIR := /usr/share/datasets/fashion-mnist
DEMO_ARGS ?=

data: $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz

$(FASHION_DIR)/t10k-labels-idx1-ubyte.gz:
	@command -v apt-get >/dev/null || { echo "need Debian's dataset-fashion-mnist (or pass DEMO_ARGS=--data-dir DIR)"; exit 1; }
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

demo: build data
	$(PYTHON) apps/train_fashion_mnist.py $(DEMO_ARGS)

# The real-data runs beside the main job: a convolutional network on
# Fashion-MNIST, and a word-level LSTM language model on Debian's fortunes.
FORTUNES := /usr/share/games/fortunes/fortunes

$(FORTUNES):
	@command -v apt-get >/dev/null || { echo "need Debian's fortunes (or pass DEMO_ARGS=--data-dir DIR)"; exit 1; }
	apt-get update -qq && apt-get install -y -qq fortunes

demo-cnn: build data
	$(PYTHON) apps/train_fashion_mnist.py --model cnn $(DEMO_ARGS)

demo-lm: build $(FORTUNES)
	$(PYTHON) apps/train_lm.py $(DEMO_ARGS)

demo-lm-transformer: build $(FORTUNES)
	$(PYTHON) apps/train_lm.py --seq-model transformer $(DEMO_ARGS)

ndarray-demo: build
	$(PYTHON) apps/ndarray_demo.py

clean:
	rm -rf build needle/*.so *.egg-info

# What the notebooks and needle.viz need beyond the Python packages: the data
# the notebooks read, Graphviz's dot program (draws needle.viz graphs) and the
# Jupyter kernel that nbclient starts.
DOT := /usr/bin/dot

$(DOT):
	@command -v apt-get >/dev/null || { echo "need Graphviz's dot (apt-get install graphviz)"; exit 1; }
	apt-get update -qq && apt-get install -y -qq graphviz


.PHONY: notebook-deps
notebook-deps: deps data $(FORTUNES) $(DOT)
	$(PYTHON) -m ipykernel install --user --name python3 >/dev/null

# Clear the notebooks' outputs before committing (tests/test_notebooks.py checks).
.PHONY: strip-notebooks
strip-notebooks: deps
	$(PYTHON) notebooks/strip_outputs.py notebooks/*.ipynb

# The GPU check (issue 10), for a machine with a CUDA GPU: build needle._cuda
# with warnings as errors, refuse to pass vacuously without a GPU, every kernel
# against NumPy/the CPU (tests/test_cuda.py), the cuda benchmarks, the cuda
# cases of the device-parametrized tests (the `device` fixture, tests/conftest.py),
# then the rest of the op, module, optimizer and model tests with cuda() as the
# default device (the device-parametrized cases ran in the step before). Meant
# to fit 10 minutes on an H200 (not yet timed on one). The estimate: the build
# about 2 minutes (all of csrc/cuda compiles in 1.6 minutes on 2 loaded cores
# here); the cpu cases of DEVICE_SUITE (4,071 for -k cpu; 3,818 cuda twins;
# 4,285 and 4,020 since the fifth to seventh reviews)
# take 16 s here idle, about 75 s under load (48 s for the first nine files,
# 19-24 s for the 731 of the seven added with the third review: engine, conv,
# nn.Conv, sequence, views, serialization, state dicts; 3 s for
# test_backend_conv.py's 48), and their cuda twins run the same Python with
# kernel launches instead of loops (at most twice that: about 150 s of the
# step's 240); test_cuda.py takes 30 s here
# (cpu cases; its largest GPU cases fill 18 GB and about 60 GB once, well under
# a second of H200 bandwidth each); the steps' timeouts add up to 14 minutes as
# a hard ceiling; the expected total is about 7. Every file that takes the
# device fixture belongs in DEVICE_SUITE (test_cuda.py checks).
DEVICE_SUITE = tests/test_autograd_ops.py tests/test_ndarray_ops.py tests/test_nn_basic.py \
  tests/test_nn_transformer.py tests/test_optim.py tests/test_softmax_loss.py \
  tests/test_attention_ops.py tests/test_data.py tests/test_models.py \
  tests/test_autograd_engine.py tests/test_conv.py tests/test_nn_conv.py \
  tests/test_nn_sequence.py tests/test_ndarray_views.py tests/test_serialization.py \
  tests/test_state_dict.py tests/test_backend_conv.py tests/test_rows_index.py \
  tests/test_layout_order.py
CUDA_SUITE = tests/test_autograd_ops.py tests/test_nn_basic.py tests/test_optim.py \
  tests/test_nn_conv.py tests/test_nn_sequence.py tests/test_models.py
.PHONY: cuda-check
cuda-check: deps
	NEEDLE_CUDA=1 NEEDLE_WERROR=1 $(PYTHON) setup.py -q build_ext --inplace
	$(PYTHON) -c "import needle as n, needle._cuda as c; \
	  assert n.cuda().enabled(), c.probe(); print('cuda-check on', c.device_name())"
	timeout 180 $(PYTHON) -m pytest -q -rs tests/test_cuda.py tests/test_cuda_headers.py
	timeout 120 $(PYTHON) benchmarks/bench_cuda.py --quick
	timeout 240 $(PYTHON) -m pytest -q -p no:cacheprovider -k cuda $(DEVICE_SUITE)
	NEEDLE_DEFAULT_DEVICE=cuda timeout 300 $(PYTHON) -m pytest -q -p no:cacheprovider \
	  -k "not cpu and not cuda" $(CUDA_SUITE)

# The CUDA emulator (csrc/cuda/emu, Note [The CUDA emulator]): needle._cuda_emu,
# the same csrc/cuda kernels compiled by the host C++ compiler and run on the CPU
# (a test harness: it checks indices, bounds, barriers, warp collectives and
# launch configurations, not timing, the memory model or nvcc's code). The same
# steps as cuda-check, with NEEDLE_CUDA_EMU=1 selecting the emulated module (no
# GPU, no nvcc needed); the GPU-scale cases of test_cuda.py skip under it, and
# the 2-epoch FashionResNet job (2.5 minutes of emulated convolutions) is left out.
# test_cuda.py runs twice more with every grid cap at 1 and at 3 blocks
# (NDL_CUDA_EMU_GRID, Note [Grid caps], cuda_common.cuh): the grid-stride loops'
# later turns, which a GPU reaches only past 16M elements, run at its sizes; the
# second time with NDL_CUDA_EMU_AHEAD=1 too (a warp runs on to its next barrier:
# Note [Emulated execution], emu_exec.cc), and the device suite's cuda cases so too.
# cuda-emu-asan: the same under AddressSanitizer + UBSan (the fibers announce
# their stack switches), so a kernel's out-of-bounds access is reported with
# its line, allocations exactly as asked and not cached (NDL_CUDA_EMU_EXACT=1,
# Note [Exact blocks under the emulator], cuda_memory.cu); needle._C and the
# emulator are rebuilt with the sanitizers, the normal build restored afterwards.
CUDA_EMU_BUILD = NEEDLE_CUDA=0 NEEDLE_CUDA_EMU=1 NEEDLE_WERROR=1 $(PYTHON) setup.py -q \
  build_ext --inplace
CUDA_EMU_TESTS = $(PYTHON) -c "import needle as n, needle._cuda_emu as c; \
	  assert n.cuda().enabled(), c.probe(); print('cuda-emu on', c.device_name())" && \
	timeout 300 $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_cuda.py \
	  tests/test_cuda_emu.py tests/test_cuda_emu_mma.py && \
	NDL_CUDA_EMU_GRID=1 timeout 300 $(PYTHON) -m pytest -q -p no:cacheprovider \
	  tests/test_cuda.py && \
	NDL_CUDA_EMU_GRID=3 NDL_CUDA_EMU_AHEAD=1 timeout 300 $(PYTHON) -m pytest -q \
	  -p no:cacheprovider tests/test_cuda.py && \
	NDL_CUDA_EMU_GRID=3 NDL_CUDA_EMU_AHEAD=1 timeout 900 $(PYTHON) -m pytest -q \
	  -p no:cacheprovider -k cuda $(DEVICE_SUITE) && \
	timeout 900 $(PYTHON) -m pytest -q -p no:cacheprovider -k cuda $(DEVICE_SUITE) && \
	NEEDLE_DEFAULT_DEVICE=cuda timeout 900 $(PYTHON) -m pytest -q -p no:cacheprovider \
	  -k "not cpu and not cuda and not fashion_cnn_job" $(CUDA_SUITE)
.PHONY: cuda-emu cuda-emu-asan cuda-emu-tsan
cuda-emu: deps
	$(CUDA_EMU_BUILD)
	export NEEDLE_CUDA_EMU=1; $(CUDA_EMU_TESTS)
cuda-emu-asan: deps
	NEEDLE_ASAN=1 $(CUDA_EMU_BUILD) --force
	export NEEDLE_CUDA_EMU=1 NDL_CUDA_EMU_EXACT=1 LD_PRELOAD=$(ASAN_LIB) PYTHONMALLOC=malloc \
	  NEEDLE_ASAN_RUN=1 ASAN_OPTIONS=$(ASAN_OPTIONS_RUN) LSAN_OPTIONS=$(LSAN_OPTIONS_RUN) \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHON=$(PY_EXE); \
	  $(subst $(PYTHON),$(PY_EXE),$(CUDA_EMU_TESTS)); \
	  status=$$?; unset LD_PRELOAD; $(CUDA_EMU_BUILD) --force; exit $$status

# Issue 14. The AVX-512 matmul kernels on a CPU without AVX-512 (Note [AVX-512
# without AVX-512], csrc/ndarray/avx512_emu.h): needle._C rebuilt with
# NEEDLE_AVX512_EMU=1 (the kernel source compiled for AVX2 against our emulation
# of the intrinsics it uses), then the tests that reach a matmul path run with
# NEEDLE_MATMUL_KERNEL=avx512: the kernels, the paths (skinny, packed, W.T,
# threads), every size 1..67, conv (im2col blocks written through interior
# pointers), the sequence layers (a layer over a sequence equals its cells, bit
# for bit), attention, the transformer and the autograd ops, on 2 threads; the
# matmul and conv files again on 1 (the work split and conv's nested pool differ).
# About 4.5 minutes here (two builds of needle._C, 1 minute each; 62 s and 40 s
# of tests). avx512-emu-asan: ASan + UBSan + the switch, on the files where an
# overrun of a tile, a mask or a tail would show: the kernels (exact tile counts,
# masked columns), every size 1..67 (every partial tile of both dtypes), the
# paths without its two slowest groups (the 4096-wide skinny products and the
# balance tiles: the same tiles on more data, already in the plain run) and
# conv's backend tests; about 5.5 minutes here (builds 1.3 + 1 minutes, tests 3). Both restore
# the normal build afterwards, as `asan` does, and fail when a test does.
AVX512_EMU_BUILD = NEEDLE_CUDA=0 NEEDLE_AVX512_EMU=1 NEEDLE_WERROR=1 $(PYTHON) setup.py -q \
  build_ext --inplace --force
AVX512_EMU_MATMUL = tests/test_matmul_kernels.py tests/test_matmul_paths.py \
  tests/test_ndarray_matmul.py
AVX512_EMU_TESTS = $(AVX512_EMU_MATMUL) tests/test_backend_conv.py tests/test_conv.py \
  tests/test_nn_conv.py \
  tests/test_nn_sequence.py tests/test_attention_ops.py tests/test_nn_transformer.py \
  tests/test_autograd_ops.py
AVX512_EMU_PYTEST = NEEDLE_MATMUL_KERNEL=avx512 $(PY_EXE) -m pytest -q -p no:cacheprovider
.PHONY: avx512-emu avx512-emu-asan
avx512-emu: deps
	$(AVX512_EMU_BUILD)
	NEEDLE_NUM_THREADS=2 $(AVX512_EMU_PYTEST) $(AVX512_EMU_TESTS) && \
	  NEEDLE_NUM_THREADS=1 $(AVX512_EMU_PYTEST) $(AVX512_EMU_MATMUL) tests/test_backend_conv.py; \
	  status=$$?; $(ASAN_BUILD); exit $$status
avx512-emu-asan: deps
	NEEDLE_ASAN=1 $(AVX512_EMU_BUILD)
	LD_PRELOAD=$(ASAN_LIB) PYTHONMALLOC=malloc NEEDLE_ASAN_RUN=1 \
	  ASAN_OPTIONS=$(ASAN_OPTIONS_RUN) LSAN_OPTIONS=$(LSAN_OPTIONS_RUN) \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(AVX512_EMU_PYTEST) $(AVX512_EMU_MATMUL) tests/test_backend_conv.py \
	  -k "not skinny_large_b and not balance_tiles"; \
	  status=$$?; $(ASAN_BUILD); exit $$status

# The x86-64 baseline variants of the elementwise, reduction, row (softmax, loss)
# and LSTM-cell kernels, which a CPU without AVX2 runs and this one never would:
# needle._C rebuilt with NEEDLE_BASELINE=1 (-DNDL_CPU_BASELINE_ONLY: cpu_ewise.c,
# cpu_reduce.c, cpu_rows.h, ops_rnn.c), then the tests that reach them (the
# reductions' bit-for-bit paths among them: Note [A max without NaN] has its own
# baseline max). Restores the normal build afterwards and fails when a test does.
BASELINE_TESTS = tests/test_ndarray.py tests/test_ndarray_ops.py tests/test_reduce_paths.py \
  tests/test_softmax_loss.py tests/test_nn_sequence.py tests/test_attention_ops.py \
  tests/test_autograd_ops.py
.PHONY: baseline
baseline: deps
	NEEDLE_BASELINE=1 NEEDLE_WERROR=1 $(ASAN_BUILD)
	$(PY_EXE) -m pytest -q -p no:cacheprovider $(BASELINE_TESTS); \
	  status=$$?; $(ASAN_BUILD); exit $$status

# cuda-emu-tsan: needle._cuda_emu under ThreadSanitizer, which reports data races
# between emulated GPU threads: accesses that no barrier, __syncwarp or launch
# orders (inside a barrier interval, or between consecutive blocks: Note [Races
# under ThreadSanitizer], csrc/cuda/emu/emu_exec.cc). Only the kernels are
# instrumented (not needle._C, not the emulator's runtime); libtsan is preloaded into
# the interpreter itself; a report ends the run (halt_on_error) with exit status 66,
# and pytest captures sys.stdout/err only, so the report reaches the terminal. The
# CPU thread pools run one thread each (their uninstrumented workers would look
# racy: .ci/tsan.supp says why). It runs test_cuda.py (every kernel against NumPy),
# test_cuda_emu.py and test_cuda_emu_mma.py; TSAN_FULL=1 adds the rest of cuda-emu's steps (the same
# kernels through the ops and models, with longer timeouts: TSan runs them 3-5
# times slower). The normal emulator build is restored afterwards.
TSAN_LIB = $(shell gcc -print-file-name=libtsan.so)
TSAN_OPTIONS_RUN = halt_on_error=1:exitcode=66:allocator_may_return_null=1:suppressions=$(CURDIR)/.ci/tsan.supp
TSAN_FULL ?=
CUDA_EMU_TSAN_TESTS = $(PY_EXE) -c "import needle._cuda_emu as c; \
	  assert c._selftest('tsan', (1, 1, 1), (1, 1, 1), (0, 0, 0, 0))[0] == 1, 'no TSan build'; \
	  print('cuda-emu-tsan on', c.device_name())" && \
	timeout 900 $(PY_EXE) -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cuda_emu.py \
	  tests/test_cuda_emu_mma.py \
	$(if $(TSAN_FULL),&& timeout 1800 $(PY_EXE) -m pytest -q -p no:cacheprovider -k cuda \
	  $(DEVICE_SUITE) && NEEDLE_DEFAULT_DEVICE=cuda timeout 1800 $(PY_EXE) -m pytest -q \
	  -p no:cacheprovider -k "not cpu and not cuda and not fashion_cnn_job" $(CUDA_SUITE))
cuda-emu-tsan: deps
	NEEDLE_TSAN=1 $(CUDA_EMU_BUILD) --force
	export NEEDLE_CUDA_EMU=1 LD_PRELOAD=$(TSAN_LIB) TSAN_OPTIONS=$(TSAN_OPTIONS_RUN) \
	  NEEDLE_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
	  PYTEST_ADDOPTS=--capture=sys; \
	  $(CUDA_EMU_TSAN_TESTS); \
	  status=$$?; unset LD_PRELOAD; $(CUDA_EMU_BUILD) --force; exit $$status

"""Hand-made bugs of the C++ kernels and their operator layer, where a Python mutation tester
cannot reach: for each op at least five plausible bugs (an off-by-one at a group's or a chunk's
end, a wrong stride or layout, < for <=, float32 accumulation, a missed tail, a check left out).
Each is tried once on a copy of the sources: edit, rebuild the CPU kernels (incrementally, CUDA
off), run the kernel tests until the first failure, and record which test caught it. The tests
draw fresh random inputs each run, as always: "caught by" names the first test that failed then.

The CUDA kernels (csrc/cuda) get no entry here: a bug there can only be caught on a GPU, where
`benchmarks/gpu_check.sh` runs the same tests over the CUDA device and dtypes.

Usage: kernel_bugs.py [--only ID ...] [--json PATH] [--markdown PATH]
(`make kernel-bugs`: about 40 s of rebuild and up to 2 min of tests per bug on 2 cores.)"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "kernel-bugs"
# The kernel tests, fastest first (a bug caught early stops the run); the tests past 2^31
# elements are left out (minutes each, and skipped without the memory).
TESTS = [
    "python_tests/test_ops_match_reference.py",
    "python_tests/test_ops_edge_cases.py",
    "python_tests/test_ops_bad_input.py",
    "python_tests/test_ops_out_views.py",
    "python_tests/test_ops_properties.py",
    "python_tests/test_ops_autograd.py",
    "python_tests/test_ops_torch_integration.py",
]


@dataclass(frozen=True)
class Bug:
    id: str
    op: str
    file: str
    old: str
    new: str
    what: str
    equivalent: str = ""  # why no test can catch it, where the mutated code computes the same


BUGS = [
    # --- soft_threshold: csrc/cpu/soft_threshold.cpp, csrc/ops/soft_threshold.cpp
    Bug("st-tail", "soft_threshold", "csrc/cpu/soft_threshold.cpp",
        "soft_range(x, y, out, begin, end, lam); });", "soft_range(x, y, out, begin, end - 1, lam); });",
        "the last entry of every parallel task is skipped (a missed tail)"),
    Bug("st-one-sided", "soft_threshold", "csrc/cpu/soft_threshold.cpp",
        "const T r = x[i];  // a local, not a reference into x, lets the loop vectorise\n      out[i] = r - std::min(std::max(r, -lam), lam);",
        "const T r = x[i];  // a local, not a reference into x, lets the loop vectorise\n      out[i] = r - std::min(std::max(r, T(0)), lam);",
        "negative entries are not shrunk (clamp to [0, lam] instead of [-lam, lam])"),
    Bug("st-lam-inf", "soft_threshold", "csrc/cpu/soft_threshold.cpp",
        "return static_cast<T>(std::min(lam, static_cast<double>(std::numeric_limits<T>::max())));",
        "return static_cast<T>(lam);",
        "a finite lam beyond float32's range rounds to inf (inf entries become NaN)"),
    Bug("st-strided", "soft_threshold", "csrc/ops/soft_threshold.cpp",
        "const at::Tensor xd = dense(x);", "const at::Tensor xd = x;",
        "a strided (sliced) input is read as if it were contiguous"),
    Bug("st-lam-check", "soft_threshold", "csrc/ops/common.cpp",
        "TORCH_CHECK(std::isfinite(lam) && lam >= 0,", "TORCH_CHECK(lam >= 0,",
        "an infinite lam is accepted"),
    Bug("st-lam-zero", "soft_threshold", "csrc/ops/common.cpp",
        "TORCH_CHECK(std::isfinite(lam) && lam >= 0,", "TORCH_CHECK(std::isfinite(lam) && lam > 0,",
        "lam = 0 (the identity) is refused: > for >="),
    # --- group_shrink: csrc/cpu/group_shrink.cpp, csrc/group_norm.h, csrc/ops/group_shrink.cpp
    Bug("gs-threshold-lt", "group_shrink", "csrc/group_norm.h",
        "return norm <= lam ? 0.0 : 1.0 - lam / norm;", "return norm < lam ? 0.0 : 1.0 - lam / norm;",
        "a group whose norm is exactly lam is compared with < instead of <= (1 - lam / lam is 0 too, but at "
        "lam = 0 a zero group becomes 1 - 0 / 0 = NaN)"),
    Bug("gs-threshold-nan", "group_shrink", "csrc/group_norm.h",
        "return norm <= lam ? 0.0 : 1.0 - lam / norm;", "return norm > lam ? 1.0 - lam / norm : 0.0;",
        "the comparison turned around, so that a NaN norm gives 0 instead of NaN (bad data hidden)"),
    Bug("gs-no-rescale", "group_shrink", "csrc/cpu/group_shrink.cpp",
        "if (!needs_rescaled_norm(s)) return std::sqrt(s);", "return std::sqrt(s);",
        "row norms whose float64 sum of squares under- or overflows are not rescaled"),
    Bug("gs-write-tail", "group_shrink", "csrc/cpu/group_shrink.cpp",
        "for (int64_t j = j0; j < j1; ++j) out[j] = x[j] * scale(j);",
        "for (int64_t j = j0; j < j1 - 1; ++j) out[j] = x[j] * scale(j);",
        "the last entry of each row segment is not written (an off-by-one at a group's end)"),
    Bug("gs-leading-dim", "group_shrink", "csrc/ops/common.cpp",
        "a.x_ld = x.ld;", "a.x_ld = a.inner;",
        "the leading dimension taken as the row length: wrong stride for padded or sliced input"),
    Bug("gs-transposed-groups", "group_shrink", "csrc/ops/common.cpp",
        "a.inner_groups = (dim == 1) != transposed;", "a.inner_groups = (dim == 1);",
        "column-major input (X.T) grouped as if it were row-major"),
    Bug("gs-float-acc", "group_shrink", "csrc/cpu/group_shrink.cpp",
        "RDA_EXT_HOT_LOOP double sumsq(const T* x, const T* y, int64_t n) {\n  double acc = 0;",
        "RDA_EXT_HOT_LOOP double sumsq(const T* x, const T* y, int64_t n) {\n  float acc = 0;",
        "row sums of squares accumulated in float32"),
    # --- group_norms: column and row norms, csrc/ops/group_norms.cpp
    Bug("gn-chunk-combine", "group_norms", "csrc/cpu/group_shrink.cpp",
        "for (int64_t c = 1; c < chunks; ++c) {", "for (int64_t c = 2; c < chunks; ++c) {",
        "the second chunk of rows is left out of the column norms"),
    Bug("gn-chunk-end", "group_norms", "csrc/cpu/group_shrink.cpp",
        "for (int64_t o = c * outer / chunks; o < (c + 1) * outer / chunks; ++o) {",
        "for (int64_t o = c * outer / chunks; o + 1 < (c + 1) * outer / chunks; ++o) {",
        "the last row of each chunk is left out of the column norms (an off-by-one at a chunk's end)"),
    Bug("gn-row-tail", "group_norms", "csrc/cpu/group_shrink.cpp",
        "norms[o] = static_cast<T>(row_norm(rows.x_row(o), rows.y_row(o), a.inner));",
        "norms[o] = static_cast<T>(row_norm(rows.x_row(o), rows.y_row(o), a.inner - 1));",
        "the last entry of each row is left out of its norm"),
    Bug("gn-float-squares", "group_norms", "csrc/cpu/group_shrink.cpp",
        "for (int64_t j = 0; j < n; ++j) acc[j] += double(x[j]) * double(x[j]);",
        "for (int64_t j = 0; j < n; ++j) acc[j] += double(x[j] * x[j]);",
        "column squares formed in the input dtype (beyond 1.8e19 they overflow, below 1e-19 they are "
        "float32 subnormals with few digits left)"),
    Bug("gn-minus-layout", "group_norms", "csrc/ops/group_norms.cpp",
        "const Matrix y = minus.has_value() ? as_matrix(*minus, transposed) : Matrix{};",
        "const Matrix y = minus.has_value() ? as_matrix(*minus, false) : Matrix{};",
        "minus read in row-major order while x is column-major"),
    Bug("gn-empty", "group_norms", "csrc/ops/group_norms.cpp",
        "if (x.numel() == 0) return norms.zero_();", "if (x.numel() == 0) return norms;",
        "the norms of the groups of an empty matrix (0 x d by columns) left uninitialised"),
    Bug("gn-rescale-minus", "group_norms", "csrc/cpu/group_shrink.cpp",
        "return y ? double(rows.x_row(o)[j] - y[j]) : double(rows.x_row(o)[j]);",
        "return double(rows.x_row(o)[j]);",
        "a column norm summed again scaled (float64 beyond 1e+-150) forgets minus"),
    # --- shrink_residual: csrc/ops/shrink_residual.cpp, the l1 path of soft_threshold.cpp
    Bug("sr-sign", "shrink_residual", "csrc/cpu/soft_threshold.cpp",
        "const T r = x[i] - y[i];", "const T r = y[i] - x[i];",
        "the residual taken as L - X"),
    Bug("sr-L-layout", "shrink_residual", "csrc/ops/soft_threshold.cpp",
        "const at::Tensor yd = y.defined() ? in_layout_of(y, xd) : y;", "const at::Tensor yd = y;",
        "L read in its own layout where X's is another (l1)"),
    Bug("sr-norms-size", "shrink_residual", "csrc/ops/shrink_residual.cpp",
        "const int64_t groups = X.size(1 - p.group_dim);", "const int64_t groups = X.size(p.group_dim);",
        "the given norms checked against the wrong dimension"),
    Bug("sr-norms-strided", "shrink_residual", "csrc/ops/shrink_residual.cpp",
        "return {&p, n.contiguous()};", "return {&p, n};",
        "a strided vector of given norms read as if contiguous"),
    Bug("sr-norms-overlap", "shrink_residual", "csrc/ops/shrink_residual.cpp",
        "if (n.defined()) at::assert_no_overlap(out, n);", "",
        "out sharing memory with the given norms is not refused"),
    Bug("sr-L-overlap", "shrink_residual", "csrc/ops/shrink_residual.cpp",
        "check_out(out, X, {X, L});", "check_out(out, X, {X});",
        "out partially overlapping L is not refused"),
    # --- convergence: csrc/cpu/convergence.cpp, csrc/cpu/parallel.h, csrc/group_norm.h
    Bug("cv-zero-X", "convergence", "csrc/group_norm.h",
        "if (b.m == 0) return a.m * sqrt(a.ssq);\n  return (a.m / b.m)", "return (a.m / b.m)",
        "‖X‖ = 0 divides by zero instead of giving the plain norms"),
    Bug("cv-chunk-tail", "convergence", "csrc/cpu/parallel.h",
        "body(c, c * kChunk, std::min(n, (c + 1) * kChunk));", "body(c, c * kChunk, std::min(n - 1, (c + 1) * kChunk));",
        "the last entry of the matrix is left out of the sums"),
    Bug("cv-combine-square", "convergence", "csrc/group_norm.h",
        "return {a.m, a.ssq + b.ssq * r * r};", "return {a.m, a.ssq + b.ssq * r};",
        "chunk sums combined with the ratio of their scales not squared"),
    Bug("cv-c2-term", "convergence", "csrc/cpu/convergence.cpp",
        "double qx = x, q1 = x - l - s, q2 = p - l - s;", "double qx = x, q1 = x - l - s, q2 = p - l;",
        "c2 forgets S"),
    Bug("cv-float-diff", "convergence", "csrc/cpu/convergence.cpp",
        "double qx = x, q1 = x - l - s, q2 = p - l - s;",
        "double qx = x, q1 = static_cast<T>(X[i] - L[i] - S[i]), q2 = static_cast<T>(P[i] - L[i] - S[i]);",
        "the differences formed in the input dtype (float32 rounding before the float64 sum)"),
    Bug("cv-L-layout", "convergence", "csrc/ops/convergence.cpp",
        "kernels_for(Xd).convergence({Xd, in_layout_of(L, Xd), in_layout_of(S, Xd), P, out, update});",
        "kernels_for(Xd).convergence({Xd, L, in_layout_of(S, Xd), P, out, update});",
        "L read in its own layout where X's is another"),
    Bug("cv-rescale-skip", "convergence", "csrc/cpu/convergence.cpp",
        "rescale |= needs_rescaled_sum(plain.sumsq[k], plain.max_abs[k]);", "",
        "chunks whose float64 sums under- or overflow are not summed again scaled"),
    # --- convergence_step: the same kernel with LS_prev written
    Bug("cs-write-L-only", "convergence_step", "csrc/cpu/convergence.cpp",
        "if constexpr (WriteP) P_next[i] = L[i] + S[i];", "if constexpr (WriteP) P_next[i] = L[i];",
        "LS_prev becomes L instead of L + S (float32)"),
    Bug("cs-float64-no-write", "convergence_step", "csrc/cpu/convergence.cpp",
        "if (may_rescale && P_next) add_into(L, S, P_next, begin, end);", "",
        "LS_prev not updated for float64 data"),
    Bug("cs-write-before-read", "convergence_step", "csrc/cpu/convergence.cpp",
        "    const ChunkSums plain = !may_rescale",
        "    if (may_rescale && P_next) add_into(L, S, P_next, begin, end);\n    const ChunkSums plain = !may_rescale",
        "float64: LS_prev overwritten before it is read (c2 measured against the new L + S)"),
    Bug("cs-strided-LS", "convergence_step", "csrc/ops/convergence.cpp",
        "if (update) finish_out(LS_prev, P);", "",
        "a strided LS_prev (updated through a dense copy) never receives the copy"),
    Bug("cs-overlap", "convergence_step", "csrc/ops/convergence.cpp",
        "TORCH_CHECK(apart, \"rda_ext: LS_prev must share no \",", "TORCH_CHECK(true, \"rda_ext: LS_prev must share no \",",
        "LS_prev sharing memory with X, L or S is not refused"),
]


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def configure(python: str) -> None:
    """A copy of the sources and a CPU-only CMake build of them under build/kernel-bugs."""
    src = WORK / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copy(ROOT / "CMakeLists.txt", src)
    bindir = Path(sysconfig.get_path("scripts"))
    pybind11_dir = run([python, "-m", "pybind11", "--cmakedir"], check=True).stdout.strip()
    cmake = shutil.which("cmake", path=str(bindir)) or "cmake"
    result = run([cmake, "-S", str(src), "-B", str(WORK / "build"), "-G", "Ninja", "-DRDA_EXT_CUDA=OFF",
                  "-DCMAKE_BUILD_TYPE=Release", f"-DPython_EXECUTABLE={python}", f"-Dpybind11_DIR={pybind11_dir}",
                  f"-DCMAKE_MAKE_PROGRAM={shutil.which('ninja', path=str(bindir)) or 'ninja'}",
                  "-DSKBUILD_PROJECT_VERSION=kernel-bugs"])
    if result.returncode:
        sys.exit(f"cmake configure failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    pkg = WORK / "pkg" / "rda_ext"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ROOT / "rda_ext", pkg, ignore=shutil.ignore_patterns("__pycache__", "*.so"))


def build() -> str | None:
    """Builds the copy; returns the compiler's complaint if it does not compile."""
    bindir = Path(sysconfig.get_path("scripts"))
    cmake = shutil.which("cmake", path=str(bindir)) or "cmake"
    result = run([cmake, "--build", str(WORK / "build")])
    if result.returncode:
        return (result.stdout + result.stderr)[-2000:]
    (so,) = (WORK / "build").glob("_C*.so")
    shutil.copy(so, WORK / "pkg" / "rda_ext" / so.name)
    return None


def first_failure(python: str) -> tuple[str | None, float]:
    """The first test of TESTS that fails with the copy's kernels, or None."""
    env = {**os.environ, "PYTHONPATH": str(WORK / "pkg"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    # Run from WORK, which holds no rda_ext/ of its own: the package comes from PYTHONPATH.
    result = run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                  *(str(ROOT / t) for t in TESTS)], cwd=WORK, env=env)
    seconds = time.perf_counter() - t0
    if result.returncode == 0:
        return None, seconds
    # Only a failing test counts as a catch: a collection error or a crash of pytest itself says
    # nothing about the bug, and stops the run.
    failed = re.findall(r"^FAILED (\S+)", result.stdout, flags=re.M)
    if failed:
        return failed[0].split("python_tests/", 1)[-1], seconds
    if result.returncode < 0:  # the kernel crashed the process: caught, by the test that ran it
        return f"crash (signal {-result.returncode})", seconds
    sys.exit(f"pytest exit {result.returncode} without a failing test:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")


def apply(bug: Bug) -> tuple[Path, str]:
    """Edits the copy; returns the file and its text before the edit."""
    path = WORK / "src" / bug.file
    text = path.read_text()
    count = text.count(bug.old)
    if count != 1:
        sys.exit(f"{bug.id}: the original text occurs {count} times in {bug.file}, not once")
    path.write_text(text.replace(bug.old, bug.new))
    return path, text


def markdown(results: list[dict], machine: str) -> str:
    lines = [
        "# Kernel bugs tried by hand",
        "",
        f"Written by `benchmarks/mutation/kernel_bugs.py` ({results[0]['date']}, {machine}; CPU kernels",
        "and the operator layer, CUDA off). Each bug was applied alone to a copy of `csrc/`, rebuilt, and",
        "the kernel tests run until the first failure. The list of bugs is in the script.",
        "",
        "| op | bug | file | caught by |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        caught = f"`{r['caught_by']}`" if r["caught_by"] else "**not caught**"
        if not r["caught_by"] and r["equivalent"]:
            caught = f"not caught, equivalent: {r['equivalent']}"
        if r.get("compile_error"):
            caught = "does not compile"
        lines.append(f"| {r['op']} | {r['what']} (`{r['id']}`) | `{r['file']}` | {caught} |")
    caught = sum(bool(r["caught_by"]) for r in results)
    equivalent = [r["id"] for r in results if not r["caught_by"] and r["equivalent"]]
    missed = [r["id"] for r in results if not r["caught_by"] and not r.get("compile_error") and not r["equivalent"]]
    lines += ["", f"{caught} of {len(results)} caught"
              + (f", {len(equivalent)} equivalent ({', '.join(equivalent)})" if equivalent else "")
              + (f"; not caught: {', '.join(missed)}" if missed else ".")]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="bug ids to try again; the other rows of --json are kept")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "kernel-bugs-amd-epyc-2t.json")
    parser.add_argument("--markdown", type=Path, default=Path(__file__).with_name("KERNEL_BUGS.md"))
    args = parser.parse_args()
    python = sys.executable
    unknown = set(args.only or ()) - {b.id for b in BUGS}
    if unknown:
        sys.exit(f"no bug {', '.join(sorted(unknown))}")
    bugs = [b for b in BUGS if not args.only or b.id in args.only]
    configure(python)
    complaint = build()
    if complaint:
        sys.exit(f"the unchanged sources do not build:\n{complaint}")
    clean, seconds = first_failure(python)
    if clean:
        sys.exit(f"the kernel tests fail without any bug: {clean}")
    print(f"clean build: kernel tests pass ({seconds:.0f} s)", flush=True)
    results = []
    for bug in bugs:
        path, original = apply(bug)
        try:
            complaint = build()
            caught, seconds = (None, 0.0) if complaint else first_failure(python)
        finally:
            path.write_text(original)
        results.append(dict(id=bug.id, op=bug.op, file=bug.file, what=bug.what, equivalent=bug.equivalent, caught_by=caught,
                            compile_error=complaint, seconds=round(seconds, 1), date=time.strftime("%Y-%m-%d")))
        print(f"{bug.id}: {'does not compile' if complaint else caught or 'NOT CAUGHT'} ({seconds:.0f} s)", flush=True)
    build()  # leave the copy as the sources are
    from_cpu = run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).stdout.strip()
    machine = f"{from_cpu or 'CPU'}, {os.cpu_count()} cores"
    if args.only and args.json.exists():  # the rows of the bugs not tried again stay as they were
        tried = {r["id"]: r for r in results}
        results = [tried.get(r["id"], r) for r in json.loads(args.json.read_text())["bugs"]]
    args.json.write_text(json.dumps(dict(machine=machine, bugs=results), indent=1) + "\n")
    args.markdown.write_text(markdown(results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())

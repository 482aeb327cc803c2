"""The installed llama.cpp (the local teacher) is portable by construction: built with
CMAKE_ARGS="-DGGML_NATIVE=OFF" it uses AVX2 and no AVX-512 or AMX, whatever CPU compiled it. Checked
two ways: llama.cpp's own report of the features it was compiled with, and its machine code."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from embedforge.doctor import (
    NON_PORTABLE_FEATURES,
    check_llama_build,
    disassembly_findings,
    llama_cpp_build_features,
    llama_cpp_libraries,
)


def test_llama_cpp_reports_a_portable_feature_set():
    features = llama_cpp_build_features()
    assert features, "llama_cpp did not load"
    assert features.get("AVX2") == 1 and features.get("FMA") == 1  # the fast path every AVX2 CPU has
    assert not {name for name in NON_PORTABLE_FEATURES if features.get(name)}, features


def test_llama_cpp_machine_code_has_no_avx512_or_amx():
    assert shutil.which("objdump"), "binutils' objdump is needed to read the machine code"
    libs = [p for p in llama_cpp_libraries() if "ggml" in p.name or "llama" in p.name]
    assert any("ggml-cpu" in p.name or "ggml" in p.name for p in libs), libs
    assert disassembly_findings(libs) == {}
    assert check_llama_build().status == "ok"


def test_the_scan_finds_avx512_and_amx_when_they_are_there(tmp_path):
    # The same scan on a library that does use them, so the test above can fail.
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    src = tmp_path / "wide.c"
    src.write_text(
        "#include <immintrin.h>\n"
        "void add16(float *a, const float *b) { _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b))); }\n"
        "void tiles(void *cfg) { _tile_loadconfig(cfg); _tile_zero(0); _tile_release(); }\n"
    )
    lib = tmp_path / "libwide.so"
    subprocess.run([cc, "-O2", "-mavx512f", "-mamx-tile", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    assert disassembly_findings([lib]) == {"libwide.so": ["AMX", "AVX-512"]}

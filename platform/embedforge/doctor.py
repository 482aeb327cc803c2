"""``embedforge doctor``: is this machine ready for a config? One line per check: a verdict, what was
found, and the fix. Exit code 1 when something the config needs is missing or broken.

The checks run in the order a newcomer's first run would hit them: Python and packages, the CPU and
the llama.cpp build, a local Ray instance, the local teacher answering a real completion, the baseline
model, the data paths the config names, free disk and memory against what the config needs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"

# x86-64 features a portable build may use (llama.cpp's non-native defaults) and those it must not,
# as llama.cpp names them -> the kernel's /proc/cpuinfo flag.
PORTABLE_FEATURES = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX2": "avx2", "F16C": "f16c", "FMA": "fma",
                     "BMI2": "bmi2"}
NON_PORTABLE_FEATURES = {"AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
                         "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni", "AMX_INT8": "amx_int8",
                         "AMX_BF16": "amx_bf16"}
# Instruction-level evidence in a disassembly: AVX-512 uses zmm (and mask k) registers, AMX the tmm tiles.
_AVX512_RE = re.compile(r"%zmm\d+")
_AMX_RE = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd|tileloaddt1|tilestored|tilezero|tilerelease|tdpb\w+)\b|%tmm\d")


@dataclasses.dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"  {self.status:<4}  {self.name:<18} {self.detail}"
        if self.fix and self.status in (WARN, FAIL):
            text += "\n" + "\n".join(f"{'':26}{'fix: ' if i == 0 else '     '}{part}"
                                     for i, part in enumerate(self.fix.splitlines()))
        return text


# --------------------------------------------------------------------------- the llama.cpp build


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (/proc/cpuinfo); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def llama_cpp_libraries() -> list[Path]:
    """The shared libraries of the installed llama-cpp-python (libllama, libggml*)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    return sorted(p for p in root.rglob("*.so*") if p.is_file())


def disassembly_findings(libraries: list[Path]) -> dict[str, list[str]] | None:
    """{library name: ["AVX-512", "AMX"] found in its machine code}; None without objdump."""
    objdump = shutil.which("objdump")
    if objdump is None:
        return None
    found: dict[str, list[str]] = {}
    for lib in libraries:
        proc = subprocess.Popen([objdump, "-d", "--no-show-raw-insn", str(lib)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, errors="replace")
        kinds: set[str] = set()
        assert proc.stdout is not None
        for line in proc.stdout:
            if "zmm" in line and _AVX512_RE.search(line):
                kinds.add("AVX-512")
            if "til" in line or "tdp" in line or "tmm" in line:
                if _AMX_RE.search(line):
                    kinds.add("AMX")
        proc.wait()
        if kinds:
            found[lib.name] = sorted(kinds)
    return found


def llama_cpp_build_features() -> dict[str, int] | None:
    """The CPU features the installed llama.cpp was compiled with, as llama.cpp itself reports them
    (``llama_print_system_info``: "CPU : SSE3 = 1 | AVX2 = 1 | ..."); None when it cannot be loaded."""
    code = "import llama_cpp, sys; sys.stdout.write(llama_cpp.llama_print_system_info().decode())"
    # A separate process: loading a library built for another CPU may crash (SIGILL) the caller.
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return {name: int(value) for name, value in re.findall(r"([A-Z0-9_]+) = (\d+)", out.stdout)}


def check_llama_build() -> Check:
    from embedforge.generate.teachers import PORTABLE_REINSTALL

    libs = llama_cpp_libraries()
    if not libs:
        return Check("llama.cpp build", FAIL, "llama-cpp-python is not installed (the local teacher's server)",
                     'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -e ".[tiny]"')
    features = llama_cpp_build_features()
    if features is None:
        return Check("llama.cpp build", FAIL, "the installed llama_cpp library does not load (crashed or failed)",
                     PORTABLE_REINSTALL)
    compiled = {k for k, v in features.items() if v}
    non_portable = sorted(compiled & set(NON_PORTABLE_FEATURES))
    asm = disassembly_findings([p for p in libs if "ggml" in p.name or "llama" in p.name])
    asm_kinds = sorted({k for kinds in (asm or {}).values() for k in kinds})
    flags = cpu_flags()
    known = {**PORTABLE_FEATURES, **NON_PORTABLE_FEATURES}
    missing_here = sorted(f for f in compiled if f in known and flags and known[f] not in flags)
    shown = " ".join(f for f in known if f in compiled)
    evidence = "no AVX-512/AMX instructions in its code" if asm == {} else (
        f"{', '.join(asm_kinds)} instructions in {', '.join(asm)}" if asm else "objdump not found: code not scanned")
    detail = f"compiled for: {shown or 'baseline x86-64'}; {evidence}"
    if missing_here:
        return Check("llama.cpp build", FAIL, f"{detail}; this CPU lacks {', '.join(missing_here)}",
                     PORTABLE_REINSTALL)
    if non_portable or asm_kinds:
        return Check("llama.cpp build", WARN,
                     f"{detail}: a native build for this CPU; it crashes on CPUs without "
                     f"{', '.join(non_portable or asm_kinds)} (and AMX builds crashed on their first completion)",
                     PORTABLE_REINSTALL)
    return Check("llama.cpp build", OK, f"portable: {detail}")


def check_cpu() -> Check:
    flags = cpu_flags()
    from embedforge.ray_utils import usable_cpus

    threads = usable_cpus()
    notable = [f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    detail = f"{threads} threads; features: {' '.join(notable) or 'unknown (no /proc/cpuinfo)'}"
    if flags and "avx2" not in flags:
        return Check("cpu", FAIL, detail + "; no AVX2 (the portable llama.cpp build needs it)",
                     'build llama.cpp for this CPU: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install --force-reinstall '
                     '--no-deps "llama-cpp-python[server]==0.3.36"')
    return Check("cpu", OK, detail)


# --------------------------------------------------------------------------- python and packages


def check_python() -> Check:
    # An older Python cannot even import embedforge (pip refuses it: requires-python >= 3.10).
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", OK, f"{version} at {sys.executable}")


def needed_extras(cfg) -> set[str]:
    """The extras (pyproject optional-dependencies) the config's stages use."""
    stages = set(cfg.pipeline.stages)
    extras = {s for s in ("generate", "train", "evaluate", "serve") if s in stages}
    if "generate" in stages and cfg.generate.local_teacher.enabled:
        extras.add("tiny")
    models = [cfg.model.backbone] + [b.model for b in cfg.evaluate.baselines.values()]
    if "smollm2-135m" in models:
        extras.add("tiny")
    if "all-minilm-l6-v2" in models:
        extras.add("baseline")
    return extras


def check_packages(extras: set[str]) -> list[Check]:
    """Every requirement of embedforge (and of the extras the config needs) installed at a version
    that satisfies the pin."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        requires = metadata.requires("embedforge") or []
    except metadata.PackageNotFoundError:
        return [Check("packages", FAIL, "embedforge is not installed", 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -e ".[all]"')]
    bad, missing_optional, seen = [], [], set()
    for text in requires:
        req = Requirement(text)
        if req.name in seen or req.name == "embedforge":
            continue
        marker_extra = re.search(r'extra == "([^"]+)"', text)
        extra = marker_extra.group(1) if marker_extra else None
        if extra in ("all", "dev"):
            continue
        needed = extra is None or extra in extras
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            (bad if needed else missing_optional).append(f"{req.name} (missing{', extra ' + extra if extra else ''})")
            seen.add(req.name)
            continue
        seen.add(req.name)
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            (bad if needed else missing_optional).append(f"{req.name} {version} (wants {req.specifier})")
    pins = {n: _version(n) for n in ("torch", "transformers", "ray", "deepspeed", "mteb", "llama_cpp_python")}
    shown = ", ".join(f"{n} {v}" for n, v in pins.items() if v)
    checks = []
    if bad:
        checks.append(Check("packages", FAIL, "; ".join(bad),
                            f'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -e ".[{",".join(sorted(extras)) or "all"}]"'))
    else:
        checks.append(Check("packages", OK, shown))
    if missing_optional:
        checks.append(Check("optional packages", WARN, "not needed by this config: " + "; ".join(missing_optional),
                            'pip install -e ".[all]" for every stage'))
    return checks


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- ray, teacher, models


def check_ray() -> Check:
    """A fresh private local instance starts and runs a task (in a child process, so the doctor
    never joins or leaves behind anything)."""
    code = (
        "import ray, time; t = time.time(); ray.init(address='local', num_cpus=1, include_dashboard=False,"
        " log_to_driver=False); f = ray.remote(lambda x: x + 1); assert ray.get(f.remote(41)) == 42;"
        " print(f'{ray.__version__} {time.time() - t:.1f}'); ray.shutdown()"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return Check("ray", FAIL, "a local Ray instance did not run a task within 180 s",
                     "check `ray start --head` by hand; free memory and /tmp space")
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])
        return Check("ray", FAIL, f"a local Ray instance failed: {tail[-400:]}", "pip install -e \".[all]\"; see the error")
    version, seconds = out.stdout.split()[-2:]
    from embedforge.ray_utils import describe_cluster_choice

    return Check("ray", OK, f"Ray {version}: a local instance started and ran a task in {seconds} s; "
                            f"{describe_cluster_choice()}")


def check_teachers(cfg) -> list[Check]:
    """The local teacher starts and completes a real request; every configured endpoint too."""
    from embedforge.generate.runner import ready_teachers
    from embedforge.generate.teachers import TeacherError

    gen = cfg.generate
    if "generate" not in cfg.pipeline.stages or not gen.uses_teachers:
        return [Check("teachers", SKIP, "this config generates no synthetic rows")]
    if not gen.local_teacher.enabled and not gen.teachers:
        return [Check("teachers", FAIL, "no teacher configured",
                      "set generate.local_teacher.enabled=true or add generate.teachers")]
    if gen.engine != "openai":
        return [Check("teachers", SKIP, f"engine {gen.engine!r} runs on the cluster's GPUs; not checked here")]
    try:
        with ready_teachers(gen, Path(tempfile.mkdtemp(prefix="ef-doctor-"))) as ready:
            checks = []
            for teacher in ready.teachers:
                got = ready.checks[teacher.name]
                checks.append(Check(f"teacher {teacher.name}", OK,
                                    f"{teacher.base_url} answered a test completion ({got['completion_tokens']} tokens "
                                    f"in {got['latency_s']} s: {got['text'].strip()[:30]!r})"))
            return checks
    except (TeacherError, FileNotFoundError) as exc:
        first, _, rest = str(exc).partition("\n")
        return [Check("teachers", FAIL, first, rest.strip() or "see the message")]


def check_baseline(extras: set[str]) -> Check:
    if "baseline" not in extras:
        return Check("minilm", SKIP, "the config names no all-minilm-l6-v2")
    code = (
        "import time; t = time.time(); from sentence_transformers import SentenceTransformer;"
        " from embedforge.models import resolve_backbone; m = SentenceTransformer(resolve_backbone('all-minilm-l6-v2'),"
        " device='cpu'); v = m.encode(['a test sentence']); print(v.shape[1], f'{time.time() - t:.1f}')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-2:])
        return Check("minilm", FAIL, f"all-MiniLM-L6-v2 did not load: {tail[-300:]}", 'pip install -e ".[baseline]"')
    dim, seconds = out.stdout.split()[-2:]
    return Check("minilm", OK, f"all-MiniLM-L6-v2 loaded and encoded ({dim} dims, {seconds} s)")


# --------------------------------------------------------------------------- data and resources


def config_paths(cfg) -> list[tuple[str, str]]:
    """(config key, path) for every input file or folder the config names."""
    # (a labeled set read from the Hugging Face hub names no local path)
    out = [(f"generate.labeled[{i}].path", d.path) for i, d in enumerate(cfg.generate.labeled) if d.path]
    if cfg.generate.corpus is not None:  # the documents corpus-grounded generation reads
        out.append(("generate.corpus.path", cfg.generate.corpus.path))
    out += [(f"generate.contamination.eval_files[{i}]", p) for i, p in enumerate(cfg.generate.contamination.eval_files)]
    out += [(f"evaluate.local_tasks[{i}].path", t.path) for i, t in enumerate(cfg.evaluate.local_tasks)]
    run_dir = str(cfg.run.dir)
    out += [(f"train.data[{i}].path", s.path) for i, s in enumerate(cfg.train.data) if not s.path.startswith(run_dir)]
    return out


def check_data(cfg) -> Check:
    paths = config_paths(cfg)
    if not paths:
        return Check("data", SKIP, "the config names no input files")
    missing = [f"{key} = {path}" for key, path in paths if not Path(path).expanduser().exists()]
    shared = sorted({p for _, p in paths if "shared/data" in p})
    if missing:
        fix = "run from the repository root, or point these keys at your copies"
        if shared:
            fix += " (../shared/data holds the public test sets beside the repository; the product never needs it)"
        return Check("data", FAIL, f"{len(missing)} of {len(paths)} paths missing: " + "; ".join(missing[:4]), fix)
    found = f"the {len(paths)} input paths the config names exist" if len(paths) > 1 else f"{paths[0][0]} exists"
    return Check("data", OK, found + (f" ({len(shared)} under shared/data)" if shared else ""))


def backbone_parameters(spec: str) -> int | None:
    """Parameters of the backbone, from its weights on disk (none downloaded); None if unknown."""
    from embedforge.models import PACKAGED_DIRS, PACKAGED_GGUF

    # Counted once from the packaged weights (the GGUF alias would otherwise need its one-time import).
    sizes = {"smollm2-135m": 134_515_008, "all-minilm-l6-v2": 22_713_216}
    if spec in PACKAGED_GGUF or spec in PACKAGED_DIRS:
        return sizes.get(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        total = sum(f.stat().st_size for f in path.glob("*.safetensors")) or sum(f.stat().st_size for f in path.glob("*.bin"))
        if total:
            import json

            dtype = json.loads((path / "config.json").read_text()).get("torch_dtype", "float32") if (path / "config.json").is_file() else "float32"
            return total // (2 if dtype in ("bfloat16", "float16") else 4)
    return None


def estimate_needs(cfg) -> dict[str, float] | None:
    """Rough disk and memory (GB) the config's local run needs; the formula is in docs/install.md.

    Per parameter: 4 bytes (fp32). Disk: the imported backbone, the merged model, the
    sentence-transformers copy and two ZeRO checkpoints of the full model (~5 copies) + 1 GB logs and
    data. Memory: each training worker holds ~3 copies (model, ZeRO-3 gather buffers, export), the
    serve replica and each evaluation actor one, plus 2 GB for Ray and the driver.
    """
    params = backbone_parameters(cfg.model.backbone)
    if params is None:
        return None
    copy_gb = params * 4 / 1e9
    stages = set(cfg.pipeline.stages)
    workers = cfg.train.num_workers if "train" in stages else 0
    mem = 2.0 + workers * 3 * copy_gb
    mem += copy_gb * (cfg.evaluate.num_actors + 1) if "evaluate" in stages else 0
    mem += copy_gb if "serve" in stages else 0
    disk = 1.0 + copy_gb * (5 if "train" in stages else 1)
    return {"disk_gb": round(disk, 1), "memory_gb": round(mem, 1), "params": params}


def check_resources(cfg) -> list[Check]:
    needs = estimate_needs(cfg)
    out_dir = Path(cfg.run.output_dir).expanduser()
    probe = out_dir if out_dir.exists() else Path.cwd()
    free_disk = shutil.disk_usage(probe).free / 1e9
    avail = _mem_available_gb()
    if needs is None:
        return [Check("disk", OK, f"{free_disk:.0f} GB free at {probe} (backbone size unknown: not estimated)"),
                Check("memory", OK if avail is None or avail > 4 else WARN, f"{avail or 0:.1f} GB available")]
    checks = []
    disk_ok = free_disk >= needs["disk_gb"]
    checks.append(Check("disk", OK if disk_ok else FAIL,
                        f"{free_disk:.0f} GB free at {probe}; this config needs about {needs['disk_gb']} GB",
                        f"free space or point run.output_dir at a larger disk (needs ~{needs['disk_gb']} GB)"))
    if avail is None:
        checks.append(Check("memory", SKIP, "MemAvailable unknown (no /proc/meminfo)"))
    else:
        mem_ok = avail >= needs["memory_gb"]
        checks.append(Check("memory", OK if mem_ok else FAIL,
                            f"{avail:.1f} GB available; this config needs about {needs['memory_gb']} GB "
                            f"({needs['params'] / 1e6:.0f}M parameters)",
                            "fewer train.num_workers / evaluate.num_actors, or a machine with more memory"))
    return checks


def _mem_available_gb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1e6 if match else None


# --------------------------------------------------------------------------- the command


def run_doctor(config_path: str | None, overrides: list[str], out=sys.stdout) -> int:
    from embedforge.config import load_config
    from embedforge.config.base import ConfigError

    print(f"embedforge doctor: config {config_path or '(defaults)'} on {sysconfig.get_platform()}", file=out)
    checks: list[Check] = [check_python()]
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        cfg = None
        first, _, rest = str(exc).partition("\n")
        checks.append(Check("config", FAIL, first + (" " + rest.strip().replace("\n", "; ") if rest else ""),
                            "fix the named keys (a path under ../shared/data: run from the repository root)"))
    extras = needed_extras(cfg) if cfg is not None else {"generate", "train", "evaluate", "serve", "tiny", "baseline"}

    def emit(new: list[Check] | Check) -> None:
        for check in new if isinstance(new, list) else [new]:
            checks.append(check)
            print(check.line(), file=out, flush=True)

    for check in checks:
        print(check.line(), file=out, flush=True)
    emit(check_packages(extras))
    emit(check_cpu())
    emit(check_llama_build() if "tiny" in extras else Check("llama.cpp build", SKIP, "no local teacher in this config"))
    emit(check_ray())
    if cfg is not None:
        emit(check_teachers(cfg))
        emit(check_baseline(extras))
        emit(check_data(cfg))
        emit(check_resources(cfg))
    failed = [c.name for c in checks if c.status == FAIL]
    warned = [c.name for c in checks if c.status == WARN]
    if failed:
        print(f"embedforge doctor: {len(failed)} check(s) failed: {', '.join(failed)}", file=out)
        return 1
    print(f"embedforge doctor: ready{' (warnings: ' + ', '.join(warned) + ')' if warned else ''}", file=out)
    return 0

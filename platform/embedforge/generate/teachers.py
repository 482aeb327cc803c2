"""Teachers: OpenAI-compatible endpoints called with the official async client, shared rate limits,
a preflight check, and the local llama.cpp server the job starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embedforge.config.base import ConfigError
from embedforge.config.generate import LocalTeacherConfig, TeacherConfig
from embedforge.ray_utils import free_port


class TeacherError(ConfigError):
    """A teacher that cannot be used; the message names the teacher, its endpoint and the error."""


class LocalTeacherDied(TeacherError):
    """The local teacher's server process is gone: its exit status, log tail and what to do."""


PORTABLE_REINSTALL = (
    'pip cache remove llama_cpp_python; CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall '
    '--no-deps "llama-cpp-python[server]==0.3.36"'
)


# --------------------------------------------------------------------------------------- limits


class TokenBucket:
    """Requests- and tokens-per-minute limits as reservations: ``reserve`` says how long to wait.

    Capacity is one minute's allowance; a reservation may drive the balance negative, and whoever
    reserved then waits until the refill covers it, so concurrent callers queue fairly.
    """

    def __init__(self, per_minute: float | None, now: float | None = None):
        self.rate = None if per_minute is None else per_minute / 60.0
        self.capacity = per_minute
        self.level = per_minute
        self.stamp = time.monotonic() if now is None else now

    def reserve(self, amount: float, now: float | None = None) -> float:
        if self.rate is None:
            return 0.0
        now = time.monotonic() if now is None else now
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        self.level -= amount
        return 0.0 if self.level >= 0 else -self.level / self.rate

    def refund(self, amount: float) -> None:
        if self.rate is not None:
            self.level = min(self.capacity, self.level + amount)


class TeacherLimits:
    """Both limits of one teacher. One instance lives in a named Ray actor shared by every caller."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.requests = TokenBucket(requests_per_minute)
        self.tokens = TokenBucket(tokens_per_minute)

    def reserve(self, tokens: int) -> float:
        return max(self.requests.reserve(1), self.tokens.reserve(tokens))

    def settle(self, reserved: int, used: int) -> None:
        # Reservations use the worst case (prompt + max_tokens); give back what was not used.
        if used < reserved:
            self.tokens.refund(reserved - used)


def limits_actor(run_key: str, teacher: TeacherConfig):
    """The named actor holding ``teacher``'s limits for this run (created once, found by every actor)."""
    import ray

    name = f"embedforge-limits-{run_key}-{teacher.name}"
    actor_cls = ray.remote(num_cpus=0)(TeacherLimits)
    return actor_cls.options(name=name, namespace="embedforge", get_if_exists=True, lifetime=None).remote(
        teacher.requests_per_minute, teacher.tokens_per_minute
    )


class GroupQuotas:
    """The groups that are full, for this run: the driver marks a group as soon as its target is kept,
    and the teacher callers skip that group's remaining requests instead of paying for surplus rows."""

    def __init__(self):
        self.full: set[str] = set()

    def mark_full(self, group: str) -> None:
        self.full.add(group)

    def reset(self, full: list[str]) -> None:
        """At the start of a session: the groups already full (an actor left by an earlier session in
        the same driver may hold groups a larger target has reopened)."""
        self.full = set(full)

    def full_groups(self) -> list[str]:
        return sorted(self.full)


def quotas_actor_name(run_key: str) -> str:
    return f"embedforge-quotas-{run_key}"


def quotas_actor(run_key: str):
    """The named actor holding this run's full groups (created once, found by every teacher caller)."""
    import ray

    return ray.remote(num_cpus=0)(GroupQuotas).options(name=quotas_actor_name(run_key), namespace="embedforge",
                                                       get_if_exists=True, lifetime=None).remote()


# --------------------------------------------------------------------------------------- calls


def response_format(mode: str, schema: dict, name: str = "output") -> dict | None:
    if mode == "json_schema":  # OpenAI, vLLM
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "json_object_schema":  # llama-cpp-python's server
        # Its grammar honours minLength (OpenAI's strict mode does not take it): no empty strings.
        props = {k: ({**v, "minLength": 1} if v.get("type") == "string" else v) for k, v in schema.get("properties", {}).items()}
        return {"type": "json_object", "schema": {**schema, "properties": props}}
    return None


def make_client(teacher: TeacherConfig):
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=teacher.base_url, api_key=teacher.api_key(), max_retries=teacher.max_retries, timeout=teacher.timeout_s
    )


def estimate_prompt_tokens(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages) // 3 + 8


async def call_teacher(client, teacher: TeacherConfig, request: dict, max_tokens: int, limits=None) -> dict:
    """One chat completion; failures (after the client's own retries) come back as ``error``."""
    import openai

    messages = json.loads(request["messages"])
    reserved = estimate_prompt_tokens(messages) + max_tokens
    if limits is not None:
        wait = await limits.reserve.remote(reserved)
        if wait > 0:
            await asyncio.sleep(wait)
    kwargs = dict(
        model=teacher.model, messages=messages, max_tokens=max_tokens, temperature=teacher.temperature,
        top_p=teacher.top_p, seed=int(request["seed"]),
    )
    fmt = response_format(teacher.response_format, json.loads(request["schema"]))
    if fmt is not None:
        kwargs["response_format"] = fmt
    started = time.monotonic()
    out = {"text": "", "finish_reason": "", "prompt_tokens": 0, "completion_tokens": 0, "error": ""}
    try:
        resp = await client.chat.completions.create(**kwargs)
        choice = resp.choices[0]
        out["text"] = choice.message.content or ""
        out["finish_reason"] = choice.finish_reason or ""
        if resp.usage is not None:
            out["prompt_tokens"] = int(resp.usage.prompt_tokens or 0)
            out["completion_tokens"] = int(resp.usage.completion_tokens or 0)
    except openai.OpenAIError as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    out["latency_s"] = time.monotonic() - started
    if limits is not None:
        limits.settle.remote(reserved, out["prompt_tokens"] + out["completion_tokens"])
    return out


# ------------------------------------------------------------------------------------ preflight


PREFLIGHT_PROMPT = [{"role": "user", "content": "Reply with the single word: OK"}]


def preflight(teacher: TeacherConfig, timeout_s: float = 60.0, server: LocalTeacherServer | None = None) -> dict:
    """Reachable, key accepted, model served, and one real short completion answered — checked before
    any Ray work. Raises TeacherError naming the teacher, its URL and what happened; when ``server``
    (the local teacher's process) died meanwhile, LocalTeacherDied with its exit status and log.
    Returns the completion's text, tokens and latency."""
    import openai

    where = f"teacher {teacher.name!r} at {teacher.base_url}"
    try:
        key = teacher.api_key()
    except ValueError as exc:
        raise TeacherError(f"{where}: {exc}") from None
    # The teacher's own retries: a 429 or 5xx at the check is what the run would retry too.
    client = openai.OpenAI(base_url=teacher.base_url, api_key=key, max_retries=max(1, teacher.max_retries),
                           timeout=timeout_s)
    step = "GET /models"
    try:
        served = [m.id for m in client.models.list().data]
        if teacher.model not in served:
            raise TeacherError(f"{where}: unknown model {teacher.model!r}; the endpoint serves: {', '.join(served) or 'nothing'}")
        step = "a test completion (POST /chat/completions, 8 tokens)"
        started = time.monotonic()
        resp = client.chat.completions.create(model=teacher.model, messages=PREFLIGHT_PROMPT, max_tokens=8, temperature=0)
        if not resp.choices:
            raise TeacherError(f"{where}: {step} came back without choices")
        usage = resp.usage
        return {"text": resp.choices[0].message.content or "", "latency_s": round(time.monotonic() - started, 3),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0)}
    except openai.OpenAIError as exc:
        if server is not None:
            server.raise_if_dead(f"during the teacher check ({step})")
        if isinstance(exc, openai.AuthenticationError):
            raise TeacherError(f"{where}: the API key in ${teacher.api_key_env} was refused ({exc.status_code}: {exc.message})") from None
        if isinstance(exc, openai.APITimeoutError):
            raise TeacherError(f"{where}: no answer to {step} within {timeout_s:g} s") from None
        if isinstance(exc, openai.APIConnectionError):
            raise TeacherError(f"{where}: endpoint unreachable during {step} ({exc.__cause__ or exc})") from None
        if isinstance(exc, openai.APIStatusError):
            raise TeacherError(f"{where}: HTTP {exc.status_code} from {step} ({exc.message})") from None
        raise TeacherError(f"{where}: {step} failed: {type(exc).__name__}: {exc}") from None
    finally:
        client.close()


# ---------------------------------------------------------------------------- the local teacher


def resolve_gguf(model: str) -> Path:
    from embedforge.models import PACKAGED_GGUF, packaged_gguf

    if model in PACKAGED_GGUF:
        return packaged_gguf(model)
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise TeacherError(
            f"generate.local_teacher.model: {model!r} is neither an existing .gguf file nor one of: {', '.join(PACKAGED_GGUF)}"
        )
    return path


def _die_with_parent() -> None:
    # A killed job (SIGKILL included) must not leave its llama.cpp server behind: Linux's
    # PR_SET_PDEATHSIG sends the server SIGTERM when the process that started it dies.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class LocalTeacherServer:
    """``python -m llama_cpp.server`` on a local port, in its own process group (stopped with it)."""

    def __init__(self, cfg: LocalTeacherConfig, log_dir: str | Path | None = None):
        self.cfg = cfg
        self.gguf = resolve_gguf(cfg.model)
        self.port = cfg.port or free_port()
        self.alias = Path(cfg.model).stem if cfg.model.endswith(".gguf") else cfg.model
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="ef-llama-")) / f"llama_server_{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/v1"

    def teacher(self) -> TeacherConfig:
        return TeacherConfig(
            name=self.cfg.name, base_url=self.base_url, model=self.alias, weight=self.cfg.weight,
            max_concurrency=self.cfg.max_concurrency, response_format="json_object_schema", max_retries=2,
            timeout_s=600.0,
        )

    def command(self) -> list[str]:
        fill = {"python": sys.executable, "model": str(self.gguf), "alias": self.alias, "host": self.cfg.host,
                "port": str(self.port), "n_ctx": str(self.cfg.n_ctx), "n_threads": str(self.cfg.n_threads or os.cpu_count())}
        if self.cfg.command:
            return [part.format(**fill) for part in self.cfg.command]
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", fill["model"], "--host", self.cfg.host,
            "--port", fill["port"], "--model_alias", self.alias, "--n_ctx", fill["n_ctx"],
        ]
        if self.cfg.n_threads:
            cmd += ["--n_threads", fill["n_threads"]]
        return cmd

    def start(self) -> LocalTeacherServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(), stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            self.raise_if_dead("while starting")
            if self._ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise TeacherError(
            f"local teacher {self.cfg.name!r} at {self.base_url}: not ready after {self.cfg.startup_timeout_s:g} s "
            f"(generate.local_teacher.startup_timeout_s). Last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def exit_status(self) -> str | None:
        """None while the process runs; else how it ended ("exit code 1", "killed by signal SIGSEGV")."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"killed by signal {name} (exit status {code})"
        return f"exit code {code}"

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"

    def raise_if_dead(self, when: str) -> None:
        """Raise LocalTeacherDied when the server process has ended (at start-up, preflight or mid-run)."""
        status = self.exit_status()
        if status is None:
            return
        crashed = "SIGSEGV" in status or "SIGILL" in status
        advice = (
            "A crash like this on the first completion is what a llama.cpp built for another CPU (or natively "
            "on an AVX-512/AMX CPU) does: check the build with `embedforge doctor`, and reinstall it portable with\n"
            f"    {PORTABLE_REINSTALL}\n" if crashed else
            "Read the log above (port taken, model file missing, out of memory?) and `embedforge doctor`.\n"
        )
        raise LocalTeacherDied(
            f"local teacher {self.cfg.name!r} ({self.base_url}) died {when}: {status}. "
            f"Last lines of {self.log_path}:\n{self.log_tail()}\n{advice}"
            "Committed work is kept: rerun the same command to continue."
        )

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.base_url + "/models", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

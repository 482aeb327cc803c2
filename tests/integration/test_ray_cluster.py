"""The local cluster fixture behaves like a user's `ray start --head`: token auth on, jobs run."""

import subprocess
import sys
from pathlib import Path


def _ray(args, env, cwd, timeout=300):
    return subprocess.run([str(Path(sys.executable).with_name("ray")), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_job_submit_needs_the_token(ray_cluster, tmp_path):
    (tmp_path / "hello.py").write_text("import ray\nray.init()\nprint('CPUS', int(ray.cluster_resources()['CPU']))\n")
    ok = _ray(["job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", ".", "--", "python", "hello.py"],
              ray_cluster["env"], tmp_path)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert "CPUS 2" in ok.stdout
    env = {k: v for k, v in ray_cluster["env"].items() if not k.startswith("RAY_AUTH")}
    refused = _ray(["job", "list", "--address", ray_cluster["dashboard"]], env, tmp_path, timeout=120)
    assert refused.returncode != 0
    assert "auth" in (refused.stdout + refused.stderr).lower()


def test_package_reaches_workers_via_init_ray(ray_cluster):
    import ray

    from embedforge.ray_utils import init_ray

    init_ray()  # already connected: a no-op, not a second cluster

    @ray.remote
    def where():
        import embedforge.loss

        return embedforge.loss.__name__

    assert ray.get(where.remote()) == "embedforge.loss"


def test_joining_a_cluster_does_not_build_the_local_only_env(ray_cluster, tmp_path):
    # The HAProxy env makes a /tmp directory and takes ports: only a Ray instance init_ray starts
    # itself may use it, so joining a running cluster must never call the factory.
    code = ("from embedforge.ray_utils import init_ray\n"
            "def factory():\n    raise SystemExit('local_env built while joining a cluster')\n"
            "ray = init_ray(local_env=factory)\n"
            "print('JOINED', ray.get_runtime_context().gcs_address)\n")
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    port = ray_cluster["address"].rsplit(":", 1)[1]  # the GCS reports the node IP, not 127.0.0.1
    assert "JOINED " in proc.stdout and proc.stdout.split("JOINED ")[1].split()[0].endswith(f":{port}"), proc.stdout
    # ... while a Ray instance it starts itself does call it (here: refuses to start).
    local = subprocess.run([sys.executable, "-c", code], env=dict(env, RAY_ADDRESS="local"), cwd=tmp_path,
                           capture_output=True, text=True, timeout=180)
    assert local.returncode != 0 and "local_env built while joining a cluster" in local.stderr, local.stderr[-2000:]

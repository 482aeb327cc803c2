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
    assert ok.returncode == 0, ok.stderr[-2000:]
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

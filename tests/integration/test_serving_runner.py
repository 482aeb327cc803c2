"""`embedforge serve` (runner.serve_endpoint) on the session cluster; the endpoint's counters reach Prometheus."""

from __future__ import annotations

import json
import time
import urllib.request

from embedforge.ray_utils import free_port


def _metrics_text(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()
    except OSError:
        return ""


def test_runner_serves_and_exports_counters(ray_cluster, minilm_dir):
    import ray
    from ray import serve

    from embedforge.config import load_config
    from embedforge.serving import runner

    port = free_port()
    cfg = load_config(None, [f"model.backbone={minilm_dir}", "model.max_length=257", f"serve.port={port}",
                             "serve.app_name=ef-runner-test", "serve.model_name=minilm-runner", "serve.api_key_env=",
                             "serve.allow_anonymous=true",
                             "serve.ray_actor_options.num_cpus=0.5", "serve.torch_threads=1"])
    try:
        info = runner.serve_endpoint(cfg, block=False)
        assert info.url == f"http://127.0.0.1:{port}/v1" and info.model == "minilm-runner"
        req = urllib.request.Request(info.url + "/embeddings", method="POST",
                                     data=json.dumps({"model": "minilm-runner", "input": ["a", "the", "cat"]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
        assert len(body["data"]) == 3 and body["usage"]["prompt_tokens"] == 9  # [CLS] x [SEP] each
        # Ray exports the replica's embedforge_* series through the node's Prometheus endpoint.
        metrics_port = ray.nodes()[0]["MetricsExportPort"]
        deadline = time.time() + 60
        text = ""
        while time.time() < deadline and 'model="minilm-runner"' not in text:
            time.sleep(2)
            text = _metrics_text(metrics_port)
        lines = [ln for ln in text.splitlines() if ln.startswith("ray_embedforge_") and 'model="minilm-runner"' in ln]
        inputs = [float(ln.split()[-1]) for ln in lines if ln.startswith("ray_embedforge_inputs")]
        assert inputs == [3.0], lines
        assert any(ln.startswith("ray_embedforge_requests") and 'status="200"' in ln for ln in lines), lines
        assert any(ln.startswith("ray_embedforge_batch_inputs") for ln in lines), lines
    finally:
        serve.shutdown()

"""`diffgen serve` under load and abuse: 16 clients x 8 requests against a short queue (every
request answered 200 or 429, no image lost or mixed between clients, memory flat, latency
reported), and a fuzzer over request bodies (never a 500, always JSON with one message)."""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from .serve_helpers import start_server, stop_server

CLIENTS, REQUESTS = 16, 8
QUEUE = 4
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    """A server with a queue of 4 on the tiny model: (process, URL)."""
    proc, url = start_server(tiny_checkpoint, tmp_path_factory.mktemp("inputs"), "--queue-size", str(QUEUE))
    yield proc, url
    code, stderr = stop_server(proc)
    assert code == 0 and "Traceback" not in stderr, stderr


def rss_mb(pid: int) -> float:
    """The process's resident memory in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def image_of(answer: httpx.Response) -> tuple[bytes, dict]:
    data = answer.json()
    assert len(data["images"]) == 1
    png = base64.b64decode(data["images"][0])
    with Image.open(io.BytesIO(png)) as image:
        return png, json.loads(image.info["diffgen"])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_16_clients_x_8_requests_each_get_their_own_images_or_429(server):
    proc, url = server
    with httpx.Client(timeout=60) as warm:  # the first request pays for the text encoder's first call
        assert warm.post(url + "/sdapi/v1/txt2img", json={"prompt": "warm up", "steps": 3}).status_code == 200
    before = rss_mb(proc.pid)
    results: dict[int, list[tuple[int, float, bytes | None, dict | None]]] = {}

    def client(k: int) -> None:
        body = {"prompt": f"client number {k}", "seed": 1000 + k, "steps": 3}
        rows = []
        with httpx.Client(timeout=60) as http:
            for _ in range(REQUESTS):
                started = time.perf_counter()
                answer = http.post(url + "/sdapi/v1/txt2img", json=body)
                seconds = time.perf_counter() - started
                if answer.status_code == 200:
                    rows.append((200, seconds, *image_of(answer)))
                else:
                    rows.append((answer.status_code, seconds, None, {"detail": answer.json().get("detail")}))
        results[k] = rows

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    wall = time.perf_counter() - started
    assert sorted(results) == list(range(CLIENTS))
    statuses = [row[0] for rows in results.values() for row in rows]
    assert len(statuses) == CLIENTS * REQUESTS and set(statuses) <= {200, 429}, set(statuses)
    for k, rows in results.items():
        served = [(png, made) for status, _, png, made in rows if status == 200]
        for png, made in served:  # each client gets its own prompt and seed, the same bytes every time
            assert (made["prompt"], made["seed"]) == (f"client number {k}", 1000 + k)
            assert png == served[0][0]
        for status, _, _, detail in rows:
            if status == 429:
                assert detail is not None and "queue is full" in str(detail["detail"])
    latencies = sorted(row[1] for rows in results.values() for row in rows if row[0] == 200)
    assert latencies, "no request was served"
    after = rss_mb(proc.pid)
    assert after - before < 64, (before, after)  # flat: no image or request kept after its answer
    p50, p95 = statistics.quantiles(latencies, n=100)[49], statistics.quantiles(latencies, n=100)[94]
    print(f"\nload: {CLIENTS}x{REQUESTS} requests in {wall:.1f} s, {len(latencies)} answered 200, "
          f"{statuses.count(429)} answered 429; 200s p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; "
          f"RSS {before:.0f} -> {after:.0f} MB")


# --- the fuzzer -----------------------------------------------------------------------------------

settings.register_profile("serve", max_examples=int(os.environ.get("SERVE_FUZZ_EXAMPLES", "60")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["a cat", "", "Euler a", "karras", "../tiny", "tiny", "8x8", "b64_json", "url",
                       "data:image/png;base64,AAAA", "iVBORw0KGgo="]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=5)
KEYS = ["prompt", "negative_prompt", "seed", "sampler_name", "sampler_index", "scheduler", "cfg_scale", "batch_size",
        "n_iter", "width", "height", "init_images", "mask", "mask_blur", "denoising_strength", "override_settings",
        "enable_hr", "styles", "send_images", "inpainting_mask_invert", "n", "size", "response_format", "model",
        "guidance", "sd_model_checkpoint", "extra"]
# steps stay small when valid (a valid request is sampled), and range over every kind of wrong value
steps = st.integers(min_value=1, max_value=2) | st.sampled_from([0, -1, 10_001, 2**64, 1.5, "3", None, True, [2]])
bodies = st.builds(lambda fields, n_steps: {**fields, "steps": n_steps},
                   st.dictionaries(st.sampled_from(KEYS), json_values, max_size=7), steps)
ROUTES = ["/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations", "/sdapi/v1/options"]


def check_answer(answer: httpx.Response, path: str) -> None:
    """2xx, or 4xx JSON with one message; never a 500, never a traceback."""
    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    if answer.status_code >= 400:
        data = answer.json()
        message = data["error"]["message"] if path.startswith("/v1/") else data["detail"]
        assert isinstance(message, str) and message and "\n" not in message


@settings(settings.get_profile("serve"))
@given(path=st.sampled_from(ROUTES), body=bodies)
def test_fuzzed_json_bodies_never_get_a_500(server, path, body):
    if path == "/sdapi/v1/options":
        body = {k: v for k, v in body.items() if k != "sd_model_checkpoint" or v != "tiny"}
    answer = httpx.post(server[1] + path, content=json.dumps(body), headers=JSON, timeout=60)
    check_answer(answer, path)


@settings(settings.get_profile("serve"))
@given(path=st.sampled_from(ROUTES),
       raw=st.binary(max_size=64) | st.sampled_from([b"[]", b"null", b"1e999", b"[" * 5000, b'{"prompt": "a']))
def test_fuzzed_raw_bodies_never_get_a_500(server, path, raw):
    check_answer(httpx.post(server[1] + path, content=raw, headers=JSON, timeout=60), path)

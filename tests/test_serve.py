"""`diffgen serve` against its real clients: a live server on the tiny model (started and stopped
here, on a free port), driven by AUTOMATIC1111's Python client (webuiapi) and OpenAI's; served
PNGs replay byte for byte with `diffgen sample --replay`; the safety defaults (keys, sizes, names,
the loopback default) and SIGTERM's clean end."""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .helpers import one_error_line, pngs, run, wait_for
from .serve_helpers import start_server, stop_server

webuiapi = pytest.importorskip("webuiapi")
openai = pytest.importorskip("openai")

KEY = "s3cret-key-for-tests"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tmp_path_factory) -> Path:
    """A --models folder: the tiny checkpoint and a copy of it named ``other``."""
    folder = tmp_path_factory.mktemp("models")
    shutil.copy(tiny_checkpoint, folder / "tiny.safetensors")
    shutil.copy(tiny_checkpoint, folder / "other.safetensors")
    return folder


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """One server for the module's tests: its URL and its inputs folder."""
    folder = tmp_path_factory.mktemp("serve")
    proc, url = start_server(models / "tiny.safetensors", folder / "inputs", "--models", str(models))
    yield url, folder / "inputs"
    code, stderr = stop_server(proc)
    assert code == 0, stderr
    assert "Traceback" not in stderr


def client(url: str) -> webuiapi.WebUIApi:
    host, port = url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler", steps=3)


def served_png(result, k: int = 0) -> bytes:
    """The bytes of image ``k`` exactly as the server sent them (webuiapi decodes them into PIL)."""
    return base64.b64decode(result.json["images"][k])


def recipe(png: bytes) -> dict:
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.info["diffgen"])


def test_webuiapi_lists_models_samplers_schedulers_and_options(server):
    api = client(server[0])
    listed = api.get_sd_models()
    assert {"tiny", "other"} <= {m["model_name"] for m in listed}
    assert all(m["title"] == f"{m['model_name']} [{m['sha256'][:10]}]" for m in listed)
    assert all("/" not in m["filename"] for m in api.get_sd_models())  # no server paths leave it
    assert "DPM++ 2M" in api.util_get_sampler_names() and "Euler a" in api.util_get_sampler_names()
    assert {"automatic", "karras", "exponential", "vp"} == set(api.util_get_scheduler_names())
    assert api.util_get_current_model().startswith("tiny [")


def test_webuiapi_txt2img_gives_the_seeds_and_recipes_asked_for(server):
    result = client(server[0]).txt2img(prompt="a red square", seed=11, batch_size=2, n_iter=2, cfg_scale=2.5,
                                       width=8, height=8)
    assert len(result.images) == 4 and all(image.size == (8, 8) for image in result.images)
    assert result.info["all_seeds"] == [11, 12, 13, 14]
    assert result.info["interrupted"] is False
    made = recipe(served_png(result, 3))
    assert (made["prompt"], made["seed"], made["steps"], made["sampler"], made["guidance"]) == \
        ("a red square", 14, 3, "euler", 2.5)
    assert (made["batch_size"], made["batch_row"]) == (2, 1)
    assert result.info["infotexts"][3] == result.images[3].info["parameters"]  # A1111's text, as in the PNG


def test_a_served_png_replays_byte_for_byte(server, models, tmp_path):
    result = client(server[0]).txt2img(prompt="a blue circle", seed=5, batch_size=3, width=8, height=8)
    served = served_png(result, 2)
    (tmp_path / "served.png").write_bytes(served)
    out = tmp_path / "replay"
    assert run("sample", "--replay", tmp_path / "served.png", "-c", models / "tiny.safetensors", "-o", out,
               "-q").exit_code == 0
    [replayed] = pngs(out)
    assert replayed.read_bytes() == served


def test_webuiapi_img2img_with_a_mask_replays_from_the_kept_input(server, models, tmp_path):
    url, inputs = server
    picture = Image.new("RGB", (16, 16), (200, 30, 30))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))
    result = client(url).img2img(images=[picture], mask_image=mask, prompt="a green square", seed=3,
                                 denoising_strength=0.6, width=8, height=8)
    made = recipe(served_png(result))
    assert made["edit"]["strength"] == 0.6 and made["edit"]["mask"]
    assert Path(made["edit"]["init_image"]).parent == inputs  # kept by the server, named by its hash
    (tmp_path / "served.png").write_bytes(served_png(result))
    out = tmp_path / "replay"
    assert run("sample", "--replay", tmp_path / "served.png", "-c", models / "tiny.safetensors", "-o", out,
               "-q").exit_code == 0
    assert pngs(out)[0].read_bytes() == served_png(result)


def test_webuiapi_options_switch_the_model_by_name_never_by_path(server):
    api = client(server[0])
    api.util_set_model("other")
    assert api.util_get_current_model().startswith("other [")
    result = api.txt2img(prompt="a cat", seed=1, width=8, height=8)
    assert result.info["sd_model_name"] == "other"
    api.set_options({"sd_model_checkpoint": "tiny"})
    for name in ("../tiny", "/etc/passwd", "a/b", "..", "tiny/../../x"):
        answer = httpx.post(server[0] + "/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert answer.status_code == 400 and "never by path" in answer.json()["detail"], name
    answer = httpx.post(server[0] + "/sdapi/v1/options", json={"sd_model_checkpoint": "nothere"})
    assert answer.status_code == 404 and "tiny" in answer.json()["detail"]
    assert api.util_get_current_model().startswith("tiny [")


def test_webuiapi_interrupt_stops_the_job_between_steps(server):
    api = client(server[0])
    answers: list = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: answers.append(api.txt2img(
        prompt="a cat", seed=0, steps=10_000, batch_size=1, n_iter=2, width=8, height=8)))
    thread.start()
    deadline = time.monotonic() + 30
    while api.get_progress()["state"]["sampling_step"] < 5:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    progress = api.get_progress()
    assert progress["state"]["job_count"] == 1 and 0 < progress["progress"] < 0.5
    api.interrupt()
    thread.join(timeout=30)
    [result] = answers
    assert result.info["interrupted"] is True and result.images == []  # the batch in progress is dropped
    assert time.monotonic() - started < 20  # 20,000 steps would take far longer
    assert api.get_progress()["state"]["job_count"] == 0


def test_the_openai_client_generates_b64_json_images(server):
    openai_client = openai.OpenAI(base_url=server[0] + "/v1", api_key="unused")
    answer = openai_client.images.generate(prompt="a yellow triangle", n=3, size="8x8", response_format="b64_json",
                                           extra_body={"seed": 21, "steps": 3})
    assert len(answer.data) == 3
    seeds = [recipe(base64.b64decode(item.b64_json))["seed"] for item in answer.data]
    assert seeds == [21, 22, 23]
    with pytest.raises(openai.BadRequestError, match="only response_format 'b64_json'"):
        openai_client.images.generate(prompt="a cat", response_format="url")
    with pytest.raises(openai.NotFoundError, match="no model named 'dall-e-3'"):
        openai_client.images.generate(prompt="a cat", model="dall-e-3", response_format="b64_json")


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 0}, "steps must be a whole number from 1 to 10000"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "steps": 10_001}, "steps must be a whole number from 1 to 10000"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "cfg_scale": 101}, "cfg_scale must be a finite number from 0 to 100"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "batch_size": 8, "n_iter": 9}, "batch_size x n_iter must be a whole"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "width": 512, "height": 512}, "this model draws 8x8 images, not 512"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "seed": 2**63}, "seed must be a whole number in [0, 2^63)"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "sampler_name": "nope"}, "unknown sampler 'nope'"),
    ("/sdapi/v1/txt2img", {"prompt": "(cat:200)"}, "prompt: 'cat' is weighted 200"),
    ("/sdapi/v1/txt2img", {"prompt": "a cat", "enable_hr": True}, "enable_hr is not supported"),
    ("/sdapi/v1/txt2img", {"prompt": ""}, "prompt must be a non-empty text"),
    ("/sdapi/v1/img2img", {"prompt": "a cat", "init_images": ["bm90IGFuIGltYWdl"]}, "init_images[0]: unreadable"),
    ("/sdapi/v1/img2img", {"prompt": "a cat", "init_images": ["/etc/passwd"]}, "not valid base64"),
    ("/v1/images/generations", {"prompt": "a cat", "n": 11}, "n must be a whole number from 1 to 10"),
    ("/v1/images/generations", {"prompt": "a cat", "size": "8x8", "guidance": float("nan")}, "guidance must be"),
])
def test_bad_values_get_4xx_with_one_message_like_the_cli(server, path, body, message):
    answer = httpx.post(server[0] + path, content=json.dumps(body), headers=JSON)
    assert answer.status_code == 400, answer.text
    data = answer.json()
    text = data["error"]["message"] if path.startswith("/v1/") else data["detail"]
    assert message in text and "\n" not in text and "Traceback" not in answer.text


def test_unknown_routes_and_methods_are_json_4xx(server):
    assert httpx.get(server[0] + "/sdapi/v1/nothing").json() == {"error": "Not Found", "detail": "Not Found"}
    assert httpx.get(server[0] + "/sdapi/v1/txt2img").status_code == 405


def test_web_pages_cannot_use_the_server_through_the_browser(server):
    """A page on another site can send a body only as a form or text (a JSON body needs a CORS
    preflight, never granted): 415. A DNS-rebinding page's requests name its own host: 400."""
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = httpx.post(server[0] + "/sdapi/v1/txt2img", content=b'{"prompt": "a cat"}',
                            headers={"Content-Type": kind})
        assert answer.status_code == 415 and "Content-Type: application/json" in answer.json()["detail"]
    answer = httpx.get(server[0] + "/sdapi/v1/options", headers={"Host": "attacker.example:7860"})
    assert answer.status_code == 400 and "Host header" in answer.json()["detail"]
    assert "access-control-allow-origin" not in httpx.options(server[0] + "/sdapi/v1/txt2img").headers
    for host in ("localhost:1", "127.0.0.1", "[::1]:7860"):
        assert httpx.get(server[0] + "/sdapi/v1/options", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(("text", "name"), [("tiny", "tiny"), ("tiny [0123456789]", "tiny"),
                                           ("tiny.safetensors", "tiny"), ("my-model_2.1", "my-model_2.1"),
                                           (" other ", "other")])
def test_a_model_is_named_by_its_stem_or_its_a1111_title(text, name):
    from diffgen.serve.catalog import name_from

    assert name_from(text) == name


@pytest.mark.parametrize("text", ["../tiny", "..", "a/b", "/etc/passwd", "a\\b", ".hidden", "x..y", "", "C:x", 3, None])
def test_a_model_name_with_a_path_in_it_is_refused(text):
    from diffgen.errors import InputError
    from diffgen.serve.catalog import name_from

    with pytest.raises(InputError):
        name_from(text)


def test_keys_and_hosts_are_checked_exactly():
    from diffgen.serve.guard import authorized, names_this_machine

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert authorized(None, None, None)  # no key set: open
    assert authorized(f"Bearer {KEY}", KEY, None) and authorized(basic("anyone", KEY), KEY, None)
    for header in (None, "", "Bearer", f"Bearer {KEY}x", f"bearer {KEY[:-1]}", basic("x", "y"), "Basic %%%", "Token x"):
        assert not authorized(header, KEY, None), header
    assert authorized(basic("ann", "pw:with:colons"), None, ("ann", "pw:with:colons"))
    assert not authorized(basic("bob", "pw:with:colons"), None, ("ann", "pw:with:colons"))
    assert not authorized("Bearer ann:pw", None, ("ann", "pw"))  # basic auth only, as A1111's --api-auth
    assert all(names_this_machine(h) for h in ("localhost", "localhost:7860", "127.0.0.1:1", "127.1.2.3", "[::1]:80"))
    assert not any(names_this_machine(h) for h in ("", "example.com", "127.0.0.1.example.com", "[::2]:80", "0.0.0.0"))


def test_refuses_to_listen_beyond_this_machine_without_a_key(tiny_checkpoint):
    result = run("serve", "-c", tiny_checkpoint, "--host", "0.0.0.0")
    one_error_line(result, 2, "refusing to listen on 0.0.0.0 without --api-key or --api-auth")
    one_error_line(run("serve", "--api-auth", "nopassword"), 2, "--api-auth must be USER:PASSWORD")


def test_keys_sizes_and_sigterm(tiny_checkpoint, tmp_path):
    """With --api-key: 401 without it, both clients with it, 413 past --max-body-mb. Then SIGTERM
    mid-job: the job in progress is answered, the one waiting gets 503, and the exit is clean."""
    proc, url = start_server(tiny_checkpoint, tmp_path / "inputs", "--models", str(tiny_checkpoint.parent),
                             "--api-key", KEY, "--max-body-mb", "0.01")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            answer = httpx.get(url + "/sdapi/v1/sd-models", headers=headers)
            assert answer.status_code == 401 and answer.json()["detail"].startswith("a valid API key is needed")
        assert httpx.get(url + "/", auth=("anyone", KEY)).status_code == 200
        api = client(url)
        api.set_auth("anyone", KEY)
        assert len(api.txt2img(prompt="a cat", width=8, height=8).images) == 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong").images.generate(prompt="a cat")
        keyed = openai.OpenAI(base_url=url + "/v1", api_key=KEY)
        assert len(keyed.images.generate(prompt="a cat", response_format="b64_json").data) == 1
        big = httpx.post(url + "/sdapi/v1/txt2img", auth=("x", KEY), content=b"{" + b" " * 20_000 + b"}",
                         headers=JSON)
        assert big.status_code == 413 and "larger than 10,485 bytes" in big.json()["detail"]

        answers: dict[str, httpx.Response] = {}

        def post(name: str, steps: int) -> None:
            answers[name] = httpx.post(url + "/sdapi/v1/txt2img", auth=("x", KEY), timeout=60,
                                       json={"prompt": "a cat", "seed": 1, "steps": steps})

        running = threading.Thread(target=post, args=("running", 300))
        running.start()
        wait_for(lambda: api.get_progress()["state"]["sampling_step"] > 0, proc)
        waiting = threading.Thread(target=post, args=("waiting", 3))
        waiting.start()
        wait_for(lambda: api.get_progress()["state"]["job_count"] == 2, proc)
        proc.send_signal(signal.SIGTERM)
        running.join(60)
        waiting.join(60)
        assert answers["running"].status_code == 200
        assert recipe(base64.b64decode(answers["running"].json()["images"][0]))["steps"] == 300  # whole
        assert answers["waiting"].status_code == 503
        assert "shut" in answers["waiting"].json()["detail"]
        assert proc.wait(timeout=30) == 0
        stderr = proc.communicate()[1]
        assert "Traceback" not in stderr and stderr.strip().endswith("diffgen serve: stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""LoRA adapters on the server, as clients see them (vLLM's conventions): `model` names an
adapter, /v1/models lists adapters with their parent, tenants are restricted to theirs (others
are as absent as unknown names), admins load and unload adapters under --lora-root, metrics
count by adapter. A real `realm-web serve` process, the default model (int4), random PEFT
adapters."""
from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from adapters import write_random_adapter
from realm_web.manifest import load_manifest
from server_proc import ServerProcess

pytestmark = pytest.mark.model
BASE = "smollm2-135m-instruct"
ADMIN, USER, PLAIN = "sk-admin-0000001", "sk-user-00000001", "sk-plain-0000001"
CONFIG = f"""
[[tenants]]
name = "admin"
api_keys = ["{ADMIN}"]
admin = true

[[tenants]]
name = "user"
api_keys = ["{USER}"]
adapters = ["sql"]

[[tenants]]
name = "plain"
api_keys = ["{PLAIN}"]
adapters = []
"""
Q = "Name three primary colors."


@pytest.fixture(scope="module")
def lora_root(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-root")
    arch = load_manifest(model_dir).architecture
    write_random_adapter(root / "sql", arch, r=8, seed=1, b_scale=0.08)
    write_random_adapter(root / "poet", arch, r=16, alpha=16, seed=2, b_scale=0.08)
    wrong = dict(arch, hidden_size=arch["hidden_size"] // 2, intermediate_size=arch["intermediate_size"] // 2)
    write_random_adapter(root / "other-base", wrong, r=8, seed=3)
    write_random_adapter(root / "too-big", arch, r=32, seed=4)
    (root / "corrupt").mkdir()
    shutil.copy(root / "sql" / "adapter_config.json", root / "corrupt")
    (root / "corrupt" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return root


@pytest.fixture(scope="module")
def server(model_dir: Path, lora_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(model_dir, tmp_path_factory.mktemp("server-lora"), config=CONFIG,
                      extra=["--dtype", "int4", "--lora-modules", f"sql={lora_root / 'sql'}", "--lora-root",
                             str(lora_root), "--max-loras", "2"])
    yield s
    s.stop()


def post(server: ServerProcess, path: str, body: Any, key: str = ADMIN) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def chat(server: ServerProcess, model: str, key: str = ADMIN, **kw: Any) -> httpx.Response:
    return post(server, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": Q}],
                                                 "temperature": 0, "max_tokens": 16, **kw}, key)


def models(server: ServerProcess, key: str) -> list[tuple[str, str | None]]:
    r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return [(m["id"], m["parent"]) for m in r.json()["data"]]


def test_model_names_the_adapter(server: ServerProcess) -> None:
    import openai

    base = chat(server, BASE).json()["choices"][0]["message"]["content"]
    sql = chat(server, "sql").json()
    assert sql["model"] == "sql" and sql["choices"][0]["message"]["content"] != base
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=USER)
    r = client.chat.completions.create(model="sql", messages=[{"role": "user", "content": Q}], temperature=0,
                                       max_tokens=16)
    assert r.choices[0].message.content == sql["choices"][0]["message"]["content"]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": Q}], temperature=0, max_tokens=16, stream=True) if c.choices)
    assert streamed == r.choices[0].message.content
    # realm-web's own field names the adapter with the base as model: the same answer
    again = chat(server, BASE, adapter="sql").json()["choices"][0]["message"]["content"]
    assert again == r.choices[0].message.content
    text = post(server, "/v1/completions", {"model": "sql", "prompt": "The sea", "max_tokens": 8,
                                            "temperature": 0}).json()["choices"][0]["text"]
    assert text != post(server, "/v1/completions", {"model": BASE, "prompt": "The sea", "max_tokens": 8,
                                                    "temperature": 0}).json()["choices"][0]["text"]


def test_mixed_concurrent_requests_equal_each_alone(server: ServerProcess) -> None:
    names = [BASE, "sql"] * 6
    prompts = [f"Tell me one fact about the number {i}." for i in range(12)]

    def body(i: int) -> dict[str, Any]:
        return {"model": names[i], "messages": [{"role": "user", "content": prompts[i]}], "temperature": 0,
                "max_tokens": 20}

    alone = [post(server, "/v1/chat/completions", body(i)).json()["choices"][0]["message"]["content"]
             for i in range(12)]

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=body(i)) for i in range(12)))
        return [r.json()["choices"][0]["message"]["content"] for r in rs]

    assert asyncio.run(together()) == alone


def test_models_lists_the_adapters_a_tenant_may_use(server: ServerProcess) -> None:
    assert models(server, USER) == [(BASE, None), ("sql", BASE)]
    assert models(server, PLAIN) == [(BASE, None)]
    card = httpx.get(server.url + "/v1/models/sql", headers={"Authorization": f"Bearer {USER}"}, timeout=10).json()
    assert card["id"] == "sql" and card["parent"] == BASE and card["object"] == "model"
    # an adapter a tenant may not use is as absent as one that does not exist
    denied, unknown = chat(server, "sql", PLAIN), chat(server, "nope", PLAIN)
    assert denied.status_code == unknown.status_code == 404
    assert denied.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"
    assert "sql" in denied.json()["error"]["message"] and "does not exist" in denied.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/models/sql", headers={"Authorization": f"Bearer {PLAIN}"},
                     timeout=10).status_code == 404
    assert chat(server, BASE, PLAIN, adapter="sql").status_code == 404
    assert chat(server, "sql", USER, adapter="sql").status_code == 404  # model and adapter both adapters


def test_adapter_files_for_the_tab_only_to_tenants_that_may_use_it(server: ServerProcess, lora_root: Path) -> None:
    get = lambda path, key: httpx.get(server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)  # noqa: E731
    card = get("/v1/models/sql", USER).json()
    assert card["files"] == ["/adapters/sql/adapter_config.json", "/adapters/sql/adapter_model.safetensors"]
    for f in card["files"]:
        r = get(f, USER)
        assert r.status_code == 200 and r.content == (lora_root / "sql" / f.rsplit("/", 1)[1]).read_bytes()
    for path, key in [(card["files"][1], PLAIN), ("/adapters/nope/adapter_config.json", USER),
                      ("/adapters/sql/../../etc/passwd", USER), ("/adapters/sql/secret.txt", USER),
                      (f"/adapters/{BASE}/adapter_config.json", USER)]:
        r = get(path, key)
        assert r.status_code == 404, (path, r.status_code)
        if r.headers.get("content-type", "").startswith("application/json"):
            assert r.json()["error"]["code"] in ("model_not_found", "not_found")
    assert httpx.get(server.url + card["files"][0], timeout=10).status_code == 401


def test_websocket_takes_the_same_model(server: ServerProcess) -> None:
    from websockets.sync.client import connect

    want = chat(server, "sql").json()["choices"][0]["message"]["content"]
    with connect(server.url.replace("http", "ws") + "/ws", additional_headers={"Authorization": f"Bearer {USER}"}) as ws:
        ws.send(json.dumps({"id": 1, "function": "generate", "params": {
            "model": "sql", "messages": [{"role": "user", "content": Q}], "temperature": 0, "max_tokens": 16}}))
        ws.send(json.dumps({"id": 2, "function": "generate", "params": {
            "model": "poet", "messages": [{"role": "user", "content": Q}], "max_tokens": 4}}))
        ws.send(json.dumps({"id": 3, "function": "metadata"}))
        frames: dict[int, dict[str, Any]] = {}
        while len(frames) < 3:
            f = json.loads(ws.recv(timeout=60))
            if f["status"] != "streaming":
                frames[f["id"]] = f
    assert frames[1]["status"] == "complete" and frames[1]["data"]["text"] == want
    assert frames[2]["status"] == "error" and frames[2]["error"]["code"] == "model_not_found"
    assert frames[3]["data"]["adapters"] == ["sql"]


def test_admins_load_and_unload_adapters(server: ServerProcess, lora_root: Path) -> None:
    def load(name: str, path: str, key: str = ADMIN) -> httpx.Response:
        return post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, key)

    r = load("poet", "poet", USER)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for path in ("../outside", "/etc", str(lora_root.parent)):
        r = load("poet", path)
        assert r.status_code == 403 and r.json()["error"]["param"] == "lora_path", path
    for path, field in (("missing", "path"), ("other-base", "hidden_size"), ("too-big", "r"),
                        ("corrupt", "adapter_model.safetensors")):
        r = load("x", path)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_adapter", (path, r.text)
        assert r.json()["error"]["param"] == field, (path, r.json())
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "x"}).status_code == 400
    assert post(server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "poet", "extra": 1}).status_code == 400
    assert load(BASE, "poet").status_code == 400  # not the base model's name
    r = load("poet", "poet")
    assert r.status_code == 200 and r.json()["id"] == "poet"
    assert models(server, ADMIN) == [(BASE, None), ("poet", BASE), ("sql", BASE)]
    assert models(server, USER) == [(BASE, None), ("sql", BASE)]  # not on its list
    poet = chat(server, "poet").json()["choices"][0]["message"]["content"]
    assert poet != chat(server, "sql").json()["choices"][0]["message"]["content"]

    async def busy() -> tuple[httpx.Response, httpx.Response, int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     headers={"Authorization": f"Bearer {ADMIN}"}) as c:
            async with c.stream("POST", "/v1/chat/completions", json={
                    "model": "poet", "messages": [{"role": "user", "content": Q}], "max_tokens": 200,
                    "ignore_eos": True, "stream": True}) as stream:
                lines = stream.aiter_lines()
                while not (await lines.__anext__()).startswith("data: "):
                    pass
                refused = await c.post("/v1/unload_lora_adapter", json={"lora_name": "poet"})
                replaced = await c.post("/v1/load_lora_adapter", json={"lora_name": "poet", "lora_path": "sql"})
                n = sum([1 async for x in lines if x.startswith("data: ")])
            return refused, replaced, n

    refused, replaced, n = asyncio.run(busy())
    assert refused.status_code == replaced.status_code == 409 and refused.json()["error"]["code"] == "adapter_in_use"
    assert n > 150  # the stream went on to its end
    r = post(server, "/v1/unload_lora_adapter", {"lora_name": "poet"})
    assert r.status_code == 200
    assert chat(server, "poet").status_code == 404
    r = post(server, "/v1/unload_lora_adapter", {"lora_name": "poet"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "adapter_not_found"
    assert post(server, "/v1/unload_lora_adapter", {"lora_name": "sql"}, USER).status_code == 403


def test_metrics_count_by_adapter(server: ServerProcess) -> None:
    chat(server, "sql", max_tokens=3)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    lines = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert lines['realm_adapter_requests_total{adapter="sql"}'] >= 1
    assert lines['realm_adapter_generation_tokens_total{adapter="sql"}'] >= 3
    assert lines['realm_adapter_requests_total{adapter="(base)"}'] >= 1
    assert lines["realm_adapters_loaded"] >= 1
    assert '"adapter": "sql"' in server.logs()


def test_serve_refuses_bad_adapters_at_the_command_line(model_dir: Path, lora_root: Path) -> None:
    import subprocess
    import sys

    for arg, says in ((f"sql={lora_root / 'other-base'}", "another base model"), ("sql", "NAME=PATH"),
                      (f"sql={lora_root / 'nowhere'}", "no such adapter"), (f"{BASE}={lora_root / 'sql'}", "base model")):
        r = subprocess.run([sys.executable, "-m", "realm_web.cli", "serve", "--model", str(model_dir),
                            "--lora-modules", arg], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and says in r.stderr, (arg, r.stderr)

# Runs inside Pyodide (wasm/src/pyrun.mjs), driven by tests/test_pyodide_core.py: the core's
# scheduler tests under pytest, then the tokenizer and the chat template on the inputs in
# /work/inputs.json, whose results the CPython side compares with its own.
import json
import os

os.environ["REALM_WEB_TEST_MODEL"] = "/model"
import pytest

from realm_web import load_chat_template, load_tokenizer

status = int(pytest.main(["-q", "-p", "no:cacheprovider", "/tests/test_scheduler.py"]))
inputs = json.load(open("/work/inputs.json"))
tok = load_tokenizer("/model")
tpl = load_chat_template("/model")
result = {
    "encode": [tok.encode(t) for t in inputs["texts"]],
    "decode": [tok.decode(ids) for ids in inputs["ids"]],
    "chat": [tpl.render(m, add_generation_prompt=True) for m in inputs["chats"]],
}
with open("/work/out.json", "w") as f:
    json.dump(result, f)
status

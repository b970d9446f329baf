"""The tutorial's code, written for openai==0.28.1, runs unchanged against oasis.

The legacy SDK is installed with `pip --target` into an isolated directory (cached under
.cache/), and the snippets run as subprocesses, the way a reader of the tutorial runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, LiveServer

LEGACY = ROOT / ".cache" / "openai-0.28.1"

TUTORIAL_COMPLETION = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
response = openai.Completion.create(engine="text-davinci-002", prompt="如何学习编程？",
                                    max_tokens=50, n=1, stop=None, temperature=0.5)
print(response.choices[0].text.strip())
print("USAGE", response["usage"]["completion_tokens"])
'''

TUTORIAL_CHAT = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
response = openai.ChatCompletion.create(
    model="gpt-3.5-turbo",
    messages=[
        {{"role": "system", "content": "You are a helpful assistant."}},
        {{"role": "user", "content": "What is 2+2?"}},
    ],
    max_tokens=30,
    temperature=0,
)
print(response.choices[0].message["content"].strip())
print("ROLE", response.choices[0].message["role"])
'''

TUTORIAL_ERROR = '''
import openai
openai.api_key = "wrong-key"
openai.api_base = "{base}"
try:
    openai.Completion.create(engine="text-davinci-002", prompt="hi", max_tokens=5)
except openai.error.AuthenticationError as e:
    print("AUTH", e.http_status)
'''

TUTORIAL_STREAM = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
parts = []
for chunk in openai.ChatCompletion.create(model="gpt-3.5-turbo", stream=True, max_tokens=10,
        messages=[{{"role": "user", "content": "Say hi"}}]):
    parts.append(chunk.choices[0].delta.get("content", ""))
print("STREAMED", len(parts) > 1, bool("".join(parts)))
'''

# OpenAI's function-calling example, with a maxLength on the string: the small model can ramble
# inside an unbounded string until max_tokens, which ends the call with finish_reason "length".
LEGACY_FUNCTIONS = '''
import json
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
functions = [{{"name": "get_current_weather", "description": "Get the current weather",
              "parameters": {{"type": "object", "properties": {{
                  "location": {{"type": "string", "description": "The city", "maxLength": 40}},
                  "unit": {{"type": "string", "enum": ["celsius", "fahrenheit"]}}}},
                  "required": ["location"]}}}}]
messages = [{{"role": "user", "content": "What's the weather like in Boston?"}}]
response = openai.ChatCompletion.create(model="gpt-3.5-turbo-0613", messages=messages,
    functions=functions, function_call={{"name": "get_current_weather"}}, max_tokens=100,
    temperature=0)
message = response["choices"][0]["message"]
print("FINISH", response["choices"][0]["finish_reason"])
args = json.loads(message["function_call"]["arguments"])
print("CALL", message["function_call"]["name"], isinstance(args["location"], str))
messages += [message, {{"role": "function", "name": "get_current_weather",
                        "content": json.dumps({{"temperature": "72", "unit": "fahrenheit"}})}}]
second = openai.ChatCompletion.create(model="gpt-3.5-turbo-0613", messages=messages,
                                      functions=functions, function_call="none", max_tokens=40)
print("ANSWER", bool(second["choices"][0]["message"]["content"].strip()))
'''


@pytest.fixture(scope="module")
def legacy_python_path() -> Path:
    marker = LEGACY / "openai" / "version.py"
    if not marker.exists():
        LEGACY.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(LEGACY),
             "openai==0.28.1"],
            check=True,
        )
    assert 'VERSION = "0.28.1"' in marker.read_text()
    return LEGACY


def run(code: str, path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_tutorial_completion_snippet(live: LiveServer, legacy_python_path: Path) -> None:
    out = run(TUTORIAL_COMPLETION.format(key=live.api_key, base=live.v1), legacy_python_path)
    text, usage = out.rsplit("USAGE", 1)
    assert text.strip()
    assert 0 < int(usage) <= 50


def test_tutorial_chat_snippet(live: LiveServer, legacy_python_path: Path) -> None:
    out = run(TUTORIAL_CHAT.format(key=live.api_key, base=live.v1), legacy_python_path)
    text, role = out.rsplit("ROLE", 1)
    assert text.strip()
    assert role.strip() == "assistant"


def test_legacy_sdk_sees_openai_errors(live: LiveServer, legacy_python_path: Path) -> None:
    assert "AUTH 401" in run(TUTORIAL_ERROR.format(base=live.v1), legacy_python_path)


def test_legacy_sdk_streams(live: LiveServer, legacy_python_path: Path) -> None:
    out = run(TUTORIAL_STREAM.format(key=live.api_key, base=live.v1), legacy_python_path)
    assert "STREAMED True True" in out


def test_legacy_sdk_function_calling(live: LiveServer, legacy_python_path: Path) -> None:
    out = run(LEGACY_FUNCTIONS.format(key=live.api_key, base=live.v1), legacy_python_path)
    assert "FINISH function_call" in out
    assert "CALL get_current_weather True" in out
    assert "ANSWER True" in out

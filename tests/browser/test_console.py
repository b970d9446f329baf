"""The oasis console in Chromium against a real `oasis serve` on the bundled model: sign-in,
streaming chat, structured output, keys (create, use from the SDK, see in usage, revoke),
what a user key may not see, inert HTML in model output, the security headers, phone width.

No assertion depends on speed: every wait is bounded and generous, and polls a condition.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.browser.conftest import Console
from tests.integration.conftest import LiveServer

ANSWER = 180_000  # ms: a bounded wait for a model's answer on a busy machine
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
LAST_ANSWER = "#messages .msg.assistant:last-child"


def admin_api(live: LiveServer, method: str, path: str, **kw: Any) -> Any:
    r = httpx.request(method, f"{live.base_url}{path}", timeout=30,
                      headers={"Authorization": f"Bearer {live.api_key}"}, **kw)
    assert r.status_code < 300, r.text
    return r.json()


def first_model(live: LiveServer) -> str:
    return str(admin_api(live, "GET", "/v1/models")["data"][0]["id"])


def until(check: Callable[[], bool], what: str, seconds: float = 90) -> None:
    """Poll ``check`` until it holds; fail after ``seconds`` (a bound, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.5)


def send(c: Console, text: str) -> None:
    c.page.fill("#prompt", text)
    c.page.click("#send")
    c.page.wait_for_selector(f"{LAST_ANSWER}[data-state=done]", timeout=ANSWER)


def test_sign_in(console: Console) -> None:
    page = console.page
    console.open()
    page.wait_for_selector("#sign-in-form")
    assert page.is_hidden("#nav")
    console.shot("sign-in")
    page.fill("#api-key", "sk-not-a-real-key")
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#sign-in-form .error")
    assert "Incorrect API key" in page.inner_text("#sign-in-form .error")
    assert page.evaluate("sessionStorage.length") == 0

    console.sign_in()
    assert page.inner_text("#who-name") == "operator key"
    assert page.is_visible("#who-admin")
    assert page.is_visible("#nav a[data-page=keys]")
    # the key is kept in this tab only: not in the URL, not in a cookie
    assert console.server.api_key not in page.url
    assert console.context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('oasis.apiKey')") == console.server.api_key

    page.click("#sign-out")
    page.wait_for_selector("#sign-in-form")
    assert page.evaluate("sessionStorage.length") == 0


def test_streamed_answer_arrives_in_pieces(console: Console) -> None:
    page = console.page
    console.sign_in()
    page.wait_for_function("() => document.querySelector('#model').options.length > 0")
    # every distinct non-empty length of the answer while it is still streaming
    page.evaluate("""() => {
      window.lengths = [];
      const box = document.getElementById('messages');
      new MutationObserver(() => {
        const msg = box.querySelector('.msg.assistant:last-child');
        if (!msg || msg.dataset.state !== 'streaming') return;
        const n = msg.querySelector('.content').textContent.length;
        if (n > 0 && n !== window.lengths[window.lengths.length - 1]) window.lengths.push(n);
      }).observe(box, {childList: true, subtree: true, characterData: true, attributes: true});
    }""")
    page.fill("#max-tokens", "120")
    send(console, "Write a short poem about the sea, in four lines.")
    lengths = page.evaluate("window.lengths")
    assert len(set(lengths)) >= 2, lengths
    answer = page.inner_text(f"{LAST_ANSWER} .content")
    assert answer.strip()
    stats = page.inner_text(f"{LAST_ANSWER} .stats")
    assert "prompt " in stats and "completion " in stats and "TTFT" in stats
    assert "tok/s" in stats and ("finish: stop" in stats or "finish: length" in stats)
    console.shot("playground")

    # the code for these settings names the page's origin and never the key itself
    page.click("#show-code")
    code = page.inner_text("#code")
    assert f"{console.server.base_url}/v1/chat/completions" in code
    assert "$OPENAI_API_KEY" in code and console.server.api_key not in code
    for tab in ("Python", "Python (openai 0.28)"):
        page.click(f"#code-panel .tab[value='{tab}']")
        code = page.inner_text("#code")
        assert "OPENAI_API_KEY" in code and console.server.api_key not in code
        assert f'"{console.server.base_url}/v1"' in code
        compile(code, tab, "exec")  # valid Python
    assert "ChatCompletion.create" in code

    # export downloads the conversation as JSON; clear empties it
    with page.expect_download() as download:
        page.click("#export")
    exported = json.loads(download.value.path().read_text(encoding="utf-8"))
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][1]["content"].strip()
    page.click("#clear")
    assert page.locator("#messages .msg").count() == 0


def test_structured_output_shows_valid_json(console: Console) -> None:
    page = console.page
    console.sign_in()
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population": {"type": "integer", "minimum": 0},
        },
        "required": ["city", "country", "population"],
        "additionalProperties": False,
    }
    page.click("text=Structured output")
    page.check("#use-schema")
    page.fill("#schema", "{not json")
    page.fill("#prompt", "Tell me about Paris.")
    page.click("#send")
    assert "not valid JSON" in page.inner_text("#composer .error")
    assert page.locator("#messages .msg").count() == 0  # nothing was sent

    page.fill("#schema", json.dumps(schema))
    send(console, "Describe Paris as JSON: its city name, country and population.")
    shown = json.loads(page.inner_text(f"{LAST_ANSWER} .content"))
    jsonschema.validate(shown, schema)


def test_key_created_used_seen_in_usage_and_revoked(console: Console, live: LiveServer) -> None:
    page = console.page
    console.sign_in()
    console.go("keys")
    page.wait_for_selector("#create-key")
    name = "浏览器测试 <b>not bold</b>"  # shown as text, CJK included
    page.fill("#new-name", name)
    page.fill("#new-rpm", "600")
    page.fill("#new-budget", "5")
    page.click("#create")
    page.wait_for_selector("#secret-value")
    secret = page.inner_text("#secret-value").strip()
    assert secret.startswith("sk-")
    row = page.locator("#keys-table tr", has_text=name)
    row.wait_for()
    key_id = row.get_attribute("data-key")
    assert key_id and key_id.startswith("key_")
    prefix = row.locator("code").inner_text()
    assert secret.startswith(prefix)
    assert page.locator("#keys-table b").count() == 0
    assert page.locator("#secret h2").inner_text().startswith(f"New key “{name}”")
    console.shot("keys", full_page=True)
    page.click("#copy-secret")  # the clipboard, or the secret selected for Ctrl+C
    # the click's handler awaits the clipboard: wait for its answer on the button
    page.wait_for_function(
        "() => document.querySelector('#copy-secret').textContent !== 'Copy'")
    copied = page.inner_text("#copy-secret")
    assert copied == "Copied" or page.evaluate("getSelection().toString().trim()") == secret

    model = first_model(live)
    client = OpenAI(base_url=live.v1, api_key=secret, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    # the request shows in the log and in the chart, once the ledger has stored it
    console.go("usage")
    page.wait_for_selector("#log")
    page.select_option("#group-by", "key")

    def in_usage() -> bool:
        page.click("#refresh")
        try:
            page.locator("#log tbody tr", has_text=name).first.wait_for(timeout=3000)
            page.wait_for_selector(f"#legend .legend-item:has-text('{prefix}')", timeout=3000)
        except playwright_timeout():
            return False
        return True

    until(in_usage, "the request in the usage log and chart")
    bars = page.locator("#chart rect.bar")
    assert any(prefix in (bars.nth(i).get_attribute("data-series") or "")
               for i in range(bars.count()))
    console.shot("usage", full_page=True)
    page.select_option("#filter-key", key_id)
    page.wait_for_function(
        "k => [...document.querySelectorAll('#log tbody tr')].length > 0 && "
        "[...document.querySelectorAll('#log tbody tr')].every(r => r.textContent.includes(k))",
        arg=name)
    row_text = page.inner_text("#log tbody tr >> nth=0")
    assert model in row_text and "chat/completions" in row_text
    assert page.locator("#legend b, #log b").count() == 0

    console.go("keys")
    row = page.locator(f"#keys-table tr[data-key='{key_id}']")
    row.wait_for()
    page.once("dialog", lambda d: d.accept())
    row.locator("button.danger").click()
    page.wait_for_selector(f"#keys-table tr[data-key='{key_id}'] .status.revoked")
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)


def test_key_edited_rotated_and_a_revoked_key_signs_out(console: Console,
                                                        live: LiveServer) -> None:
    created = admin_api(live, "POST", "/admin/keys", json={"name": "to rotate", "rpm": 60})
    page = console.page
    console.sign_in()
    console.go("keys")
    row = page.locator(f"#keys-table tr[data-key='{created['id']}']")
    row.wait_for()
    assert "60 rpm" in row.inner_text()

    row.locator("button", has_text="Edit").click()
    form = page.locator("#keys-table form.edit")
    form.locator("input[name=rpm]").fill("1200")
    form.locator("input[name=tpm]").fill("50000")
    form.locator("button[type=submit]").click()
    page.wait_for_function(
        "id => document.querySelector(`#keys-table tr[data-key='${id}']`)"
        "?.textContent.includes('1,200 rpm · 50,000 tpm')", arg=created["id"])
    shown = admin_api(live, "GET", f"/admin/keys/{created['id']}")
    assert (shown["rpm"], shown["tpm"]) == (1200, 50000)

    page.once("dialog", lambda d: d.accept())
    row.locator("button", has_text="Rotate").click()
    page.wait_for_selector("#secret-value")
    secret = page.inner_text("#secret-value").strip()
    assert secret != created["value"]
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=live.v1, api_key=created["value"], max_retries=0).models.list()
    assert OpenAI(base_url=live.v1, api_key=secret, max_retries=0).models.list().data

    # signed in with the key, then the key is revoked: the next call signs out, saying why
    other = console.context.new_page()
    other.goto(f"{live.base_url}/#/sign-in")
    other.fill("#api-key", secret)
    other.click("#sign-in-form button[type=submit]")
    other.wait_for_selector("#composer")
    admin_api(live, "DELETE", f"/admin/keys/{created['id']}")
    other.evaluate("location.hash = '#/usage'")
    other.wait_for_selector("#sign-in-form .error")
    assert "refused the key" in other.inner_text("#sign-in-form .error")
    assert other.evaluate("sessionStorage.length") == 0
    other.close()


def test_tool_calls_and_stop(console: Console) -> None:
    page = console.page
    console.sign_in()
    # stop: the stream is cut, the partial answer stays, marked as stopped
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "Write a long story about a lighthouse keeper.")
    page.click("#send")
    page.wait_for_function(
        "s => document.querySelector(s)?.textContent.trim().length > 0",
        arg=f"{LAST_ANSWER} .content", timeout=ANSWER)
    page.click("#stop")
    page.wait_for_selector(f"{LAST_ANSWER}[data-state=stopped]")
    assert "finish: stopped" in page.inner_text(f"{LAST_ANSWER} .stats")
    assert page.is_enabled("#send") and page.is_disabled("#stop")

    # tool calls arriving in pieces are shown as formatted JSON (a canned stream)
    page.click("text=Function tools")
    page.check("#use-tools")
    page.fill("#tools", "[not json")
    page.fill("#prompt", "Weather in Paris?")
    page.click("#send")
    assert "tools are not valid JSON" in page.inner_text("#composer .error")
    page.fill("#tools", json.dumps([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]))
    sent: list[Any] = []
    deltas = [{"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "get_weather",
                                                                 "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}]
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def answer(route: Any) -> None:
        sent.append(route.request.post_data_json)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/v1/chat/completions", answer)
    send(console, "Weather in Paris?")
    assert sent[0]["tools"][0]["function"]["name"] == "get_weather"
    assert sent[0]["stream"] is True and sent[0]["stream_options"] == {"include_usage": True}
    call = json.loads(page.inner_text(f"{LAST_ANSWER} .tool-call pre"))
    assert call == {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}
    assert "finish: tool_calls" in page.inner_text(f"{LAST_ANSWER} .stats")


def playwright_timeout() -> type[Exception]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    return PlaywrightTimeoutError


def test_user_key_cannot_open_admin_pages(console: Console, live: LiveServer) -> None:
    model = first_model(live)
    created = admin_api(live, "POST", "/admin/keys",
                        json={"name": "console user", "models": [model]})
    try:
        page = console.page
        console.sign_in(created["value"])
        assert page.inner_text("#who-name").startswith("console user")
        assert page.is_hidden("#who-admin")
        assert page.is_hidden("#nav a[data-page=keys]")
        assert page.is_hidden("#nav a[data-page=server]")
        assert page.is_visible("#nav a[data-page=usage]")
        page.wait_for_function("() => document.querySelector('#model').options.length > 0")
        assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [model]

        for route in ("keys", "server"):
            console.go(route)
            page.wait_for_selector("#refusal")
            assert "admin" in page.inner_text("#refusal")
        statuses = page.evaluate("""async () => {
          const auth = {Authorization: 'Bearer ' + sessionStorage.getItem('oasis.apiKey')};
          const out = {};
          for (const path of ['/admin/keys', '/console/api/server', '/console/api/me']) {
            out[path] = (await fetch(path, {headers: auth})).status;
          }
          return out;
        }""")
        assert statuses == {"/admin/keys": 403, "/console/api/server": 403, "/console/api/me": 200}

        console.go("usage")
        page.wait_for_selector("#log")
        assert page.inner_text("h1") == "Your usage"
        assert page.locator("#filter-key").count() == 0
    finally:
        admin_api(live, "DELETE", f"/admin/keys/{created['id']}")


XSS = '<script>window.xss = 1</script><img src=x onerror="window.xss = 2"> **bold**'


def test_html_in_model_output_is_inert(console: Console) -> None:
    page = console.page
    console.sign_in()
    # the real model asked to repeat markup: whatever it writes stays text
    page.fill("#system", "Repeat the user's message exactly, character for character.")
    page.fill("#max-tokens", "60")
    send(console, f"Repeat: {XSS}")
    assert page.locator("#messages .content img, #messages .content script").count() == 0

    # and a canned stream with the markup split across chunks, deterministically
    pieces = ["<scr", "ipt>window.xss = 1</script>", '<img src=x onerror="window.xss', ' = 2">',
              " **bold** and [a link](javascript:window.xss=3) and [ok](https://example.com)"]
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": p},
                            "finish_reason": None}]} for p in pieces]
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9,
                                            "total_tokens": 14}})
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))
    send(console, "anything")
    content = page.locator(f"{LAST_ANSWER} .content")
    text = content.inner_text()
    assert "<script>window.xss = 1</script>" in text and "<img src=x" in text
    assert content.locator("img, script").count() == 0
    assert content.locator("strong").inner_text() == "bold"  # Markdown still renders
    hrefs = content.locator("a").evaluate_all("as => as.map(a => a.href)")
    assert hrefs == ["https://example.com/"]
    assert "finish: stop" in page.inner_text(f"{LAST_ANSWER} .stats")
    assert page.evaluate("window.xss") is None  # and no <img> exists whose onerror could run


def test_security_headers(console: Console, live: LiveServer) -> None:
    response = console.page.goto(f"{live.base_url}/")
    assert response is not None
    headers = response.headers
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    api = httpx.get(f"{live.base_url}/v1/models")  # the API's answers carry them too
    assert api.status_code == 401 and api.headers["content-security-policy"] == CSP


def test_server_page(console: Console) -> None:
    page = console.page
    console.sign_in()
    console.go("server")
    page.wait_for_selector("#models .card.model")
    assert page.locator("#models .card.model [data-stat=slots]").count() >= 1
    assert page.locator("#models svg.spark").count() >= 1
    console.shot("server")


def test_phone_width(phone: Console) -> None:
    page = phone.page
    phone.sign_in()

    def fits() -> None:
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375 + 1, width

    fits()
    for name in ("keys", "usage", "server", "playground"):
        link = page.locator(f"#nav a[data-page={name}]")
        assert link.is_visible()
        link.click()
        page.wait_for_function("n => location.hash === '#/' + n", arg=name)
        page.wait_for_selector({"keys": "#keys-table", "usage": "#log", "server": "#models",
                                "playground": "#composer"}[name])
        fits()
        if name == "usage":
            page.wait_for_selector("#chart svg")
            fits()
            phone.shot("phone-usage")
    page.fill("#max-tokens", "40")
    page.fill("#prompt", "Say hello in Chinese and English.")
    page.click("#send")
    page.wait_for_selector(f"{LAST_ANSWER}[data-state=done]", timeout=ANSWER)
    fits()
    phone.shot("phone-playground")


MODULE = "() => document.querySelector('script[type=module]').src"


def hostile_answer() -> str:
    """About 200 KB of text that made the old renderer quadratic (openers without closers on
    long lines), crash (quotes 8000 deep) or both, in one block and in many."""
    lines = []
    for pattern in ("[a", "[a](", " _a", " *a *", "`a``", "**a ", "[a](x "):
        lines += [(pattern * 3000)[:9000]] * 3  # long lines under the renderer's cap
    lines.append("[a" * 20_000)  # over the cap: plain text
    lines.append(">" * 8000 + " deep")
    return "\n".join(lines) + "\n\n" + "- x\n" + "".join(f"{' ' * k}- y\n" for k in range(1, 400))


def test_hostile_answer_streams_and_the_page_stays_responsive(console: Console) -> None:
    page = console.page
    console.sign_in()
    answer = hostile_answer()
    pieces = [answer[k:k + 500] for k in range(0, len(answer), 500)]
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
               "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
              for p in pieces]
    chunks.append({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    events = [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
    # a stream of one event per read, each a task later (page.route answers all at once)
    page.evaluate("""events => {
      const real = window.fetch;
      window.fetch = (url, init) => {
        if (!String(url).endsWith('/v1/chat/completions')) return real(url, init);
        const bytes = new TextEncoder();
        let n = 0;
        const body = new ReadableStream({
          pull: (out) => new Promise((r) => setTimeout(r, 0)).then(() => {
            if (n < events.length) out.enqueue(bytes.encode(events[n++]));
            else out.close();
          }),
        });
        return Promise.resolve(new Response(body, {
          status: 200, headers: {'Content-Type': 'text/event-stream'}}));
      };
      window.lengths = [];
      const box = document.getElementById('messages');
      new MutationObserver(() => {
        const msg = box.querySelector('.msg.assistant:last-child');
        if (!msg || msg.dataset.state !== 'streaming') return;
        const n = msg.querySelector('.content').textContent.length;
        if (n > 0 && n !== window.lengths[window.lengths.length - 1]) window.lengths.push(n);
      }).observe(box, {childList: true, subtree: true, characterData: true, attributes: true});
    }""", events)
    page.fill("#prompt", "anything")
    page.click("#send")
    page.wait_for_selector(f"{LAST_ANSWER}[data-state=done]", timeout=ANSWER)
    # the page still answers: a frame is drawn and the answer is all there
    shown = page.evaluate("""s => new Promise((done) => requestAnimationFrame(() =>
      done(document.querySelector(s).textContent.length)))""", f"{LAST_ANSWER} .content")
    assert shown > 190_000
    assert len(set(page.evaluate("window.lengths"))) >= 2  # it grew in pieces
    content = page.locator(f"{LAST_ANSWER} .content")
    assert 1 <= content.locator("blockquote").count() <= 16
    assert content.locator("ul").count() <= 17
    assert content.locator("a, strong, em").count() == 0
    assert "finish: stop" in page.inner_text(f"{LAST_ANSWER} .stats")


def test_markdown_renderer(console: Console) -> None:
    page = console.page
    console.open()
    page.wait_for_selector("#sign-in-form")
    out = page.evaluate("""async (src) => {
      const md = await import(src.replace(/console\\.js$/, 'markdown.js'));
      const box = (text) => {
        const el = document.createElement('div');
        el.append(md.render(text));
        return el;
      };
      const fence = box('```md\\n```python\\nx = 1\\n```\\nafter');
      const deep = box('>'.repeat(8000) + ' deep');
      const list = box(Array.from({length: 500}, (_, k) => ' '.repeat(k) + '- item').join('\\n'));
      const inline = box('**b** *i* _e_ `c` ``a`b`` [l](https://example.com "t") ' +
        'https://x.org/a. snake_case_name [j](javascript:alert(1))');
      const long = '[a'.repeat(60000);
      return {
        fence: [...fence.children].map((e) => [e.tagName, e.textContent]),
        deep: [deep.querySelectorAll('blockquote').length, deep.textContent.includes('deep')],
        list: list.querySelectorAll('ul').length,
        tags: [...inline.querySelectorAll('*')].map((e) => e.tagName),
        hrefs: [...inline.querySelectorAll('a')].map((a) => a.href),
        code: [...inline.querySelectorAll('code')].map((e) => e.textContent),
        long: box(long).textContent === long,
      };
    }""", page.evaluate(MODULE))
    # a fence with an info string does not close a block (CommonMark)
    assert out["fence"] == [["PRE", "```python\nx = 1"], ["P", "after"]]
    assert out["deep"] == [16, True]  # deeper quotes are text, not a stack overflow
    assert out["list"] <= 17
    assert out["tags"] == ["P", "STRONG", "EM", "EM", "CODE", "CODE", "A", "A"]
    assert out["hrefs"] == ["https://example.com/", "https://x.org/a"]
    assert out["code"] == ["c", "a`b"]
    assert out["long"]


def test_unknown_and_inherited_routes_go_to_the_playground(console: Console) -> None:
    page = console.page
    console.sign_in()
    for route in ("__proto__", "constructor", "toString", "no-such-page"):
        console.go("usage")
        page.wait_for_selector("#log")
        console.go(route)
        page.wait_for_function("() => location.hash === '#/playground'")
        page.wait_for_selector("#composer")


def log_row(name: str) -> dict[str, Any]:
    return {"request_id": f"req_{name}", "created_at": 1_700_000_000, "key": None,
            "model": name, "endpoint": "/v1/chat/completions", "status": 200,
            "prompt_tokens": 1, "cached_tokens": 0, "completion_tokens": 1, "cost_usd": 0,
            "ttft_ms": 1, "latency_ms": 2, "finish_reason": "stop"}


def test_usage_log_pages_keep_their_filters_and_the_newest_load_wins(console: Console) -> None:
    page = console.page
    pending: list[Any] = []
    page.route("**/console/api/requests*", lambda route: pending.append(route))  # answered below

    def wait_pending(n: int) -> None:  # route handlers run while Playwright is called
        deadline = time.monotonic() + 60
        while len(pending) < n:
            assert time.monotonic() < deadline, f"waited for {n} log requests"
            page.wait_for_timeout(50)

    def answer(route: Any, rows: list[str], cursor: str | None = None) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"data": [log_row(r) for r in rows], "next_before": cursor}))

    def shown() -> list[str]:
        return page.eval_on_selector_all("#log tbody tr", "rs => rs.map(r => r.dataset.request)")

    console.sign_in()
    console.go("usage")
    wait_pending(1)
    answer(pending.pop(), ["first"], "cursor-1")
    page.wait_for_selector("#older:not([hidden])")
    # the chart loads on its own: wait for its title rather than read it at once
    page.wait_for_function(
        "() => (document.querySelector('#chart-title')?.textContent || '').includes('per UTC day')")

    # typed but not applied: the older page is the one of the filters shown
    page.fill("#filter-model", "typed-not-applied")
    page.click("#older")
    wait_pending(1)
    url = pending[0].request.url
    assert "before=cursor-1" in url and "model=" not in url
    answer(pending.pop(), ["second"])
    page.wait_for_function("() => document.querySelectorAll('#log tbody tr').length === 2")
    assert shown() == ["req_first", "req_second"]
    assert page.is_hidden("#older")

    # two filters in a row, answered in the other order: the newer one is shown
    page.fill("#filter-model", "")
    page.select_option("#filter-status", "ok")
    page.select_option("#filter-status", "error")
    wait_pending(2)
    stale, fresh = pending
    assert "status=ok" in stale.request.url and "status=error" in fresh.request.url
    answer(fresh, ["fresh"], "cursor-2")
    page.wait_for_function("() => document.querySelector('#log tbody tr')?.dataset.request"
                           " === 'req_fresh'")
    with page.expect_response(lambda r: "status=ok" in r.url):
        answer(stale, ["stale"])
    page.evaluate("() => new Promise((r) => setTimeout(r, 300))")  # room for it to land
    assert shown() == ["req_fresh"]

    # the server reads a bounded slice per call: an empty page with a cursor is followed up
    # at once, without another click
    pending.clear()  # the two answered above
    page.click("#older")
    wait_pending(1)
    assert "before=cursor-2" in pending[0].request.url
    answer(pending.pop(), [], "cursor-3")  # a slice with no match
    wait_pending(1)
    assert "before=cursor-3" in pending[0].request.url and "status=error" in pending[0].request.url
    answer(pending.pop(), ["late"])
    page.wait_for_function("() => document.querySelectorAll('#log tbody tr').length === 2")
    assert shown() == ["req_fresh", "req_late"]
    assert page.is_hidden("#older")

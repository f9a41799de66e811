"""The chat page at ``/`` in real headless Chromium (Debian's ``chromium``, driven by
Playwright's Python package; no downloaded browser), against a real ``shimmy serve``.

The server gets four tiny models whose output is known in advance:

* ``alpha``: the spelling model of ``tiny_model``, answers "Hey, world!";
* ``broken``: a valid GGUF header that llama.cpp refuses to load;
* ``endless``: "tick tock " over and over, long enough to be stopped mid-stream;
* ``evil``: Markdown plus HTML that would run script if the page ever parsed it as HTML.

``evil`` and ``endless`` need whole words as single tokens, which the byte-level spelling
model cannot spell (a byte can have only one successor, and ``<script>...</script>`` repeats
bytes), so ``write_piece_model`` below builds the same one-layer state machine over a
vocabulary of whole pieces.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clients import request_json
from conftest import ShimmyProcess, isolated_env, wait_until
from gguf import GGUFWriter, TokenType
from gguf_factory import write_gguf
from tiny_model import write_spelling_model

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs it", pytrace=False)
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

ALPHA_TEXT = "Hey, world!"  # every byte distinct: the spelling model stops after "!"
# a template that ends the prompt with <s>: the speller then starts from its first byte
ENDS_WITH_BOS = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{{ bos_token }}"
SCRIPT = "<script>window.pwned=1</script>"
IMG = '<img src=x onerror="window.pwned=1">'
EVIL_PIECES = [
    "# Title\n",
    "Some **bold** and `<b>code</b>`.\n\n",
    f"{SCRIPT}\n",
    f"{IMG}\n\n",
    f"```html\n{SCRIPT}\n```\n",
    "[click me](javascript:window.pwned=1) and [docs](https://example.org/x)",
]
ENDLESS_PIECES = ["tick ", "tock "]
ENDLESS_CONTEXT = 16384


# --- a tiny model that emits whole pieces -------------------------------------------------

N_EMBD, N_HEAD, N_FF = 320, 5, 32
UNK, BOS, EOS, FIRST_BYTE = 0, 1, 2, 3
FIRST_PIECE = FIRST_BYTE + 256


def write_piece_model(path: Path, pieces: list[str], *, loop: bool = False,
                      context_length: int = 512) -> Path:
    """A GGUF whose greedy answer is ``pieces`` in order, one token each, then ``</s>``
    (or, with ``loop``, the pieces again and again). Byte tokens are in the vocabulary so
    that any prompt tokenizes; every token that is not a piece leads to the first piece."""
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
              + [piece.replace(" ", "\u2581") for piece in pieces])  # SPM writes spaces as ▁
    n_vocab = len(tokens)
    assert n_vocab < N_EMBD, "one-hot embeddings need n_embd > n_vocab"
    last = n_vocab - 1
    output = np.zeros((n_vocab, N_EMBD), dtype=np.float32)  # row: next token, column: current
    for current in range(n_vocab):
        if FIRST_PIECE <= current < last:
            following = current + 1
        elif current == last:
            following = FIRST_PIECE if loop else EOS
        else:
            following = FIRST_PIECE
        output[following, current] = 1.0
    types = ([TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
             + [TokenType.BYTE] * 256 + [TokenType.NORMAL] * len(pieces))
    writer = GGUFWriter(path, "llama")
    _piece_hparams(writer, n_vocab, context_length)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types([int(kind) for kind in types])
    writer.add_unk_token_id(UNK)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    _piece_tensors(writer, n_vocab, output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _piece_hparams(writer: GGUFWriter, n_vocab: int, context_length: int) -> None:
    writer.add_name("Piece model")
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(1)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)


def _piece_tensors(writer: GGUFWriter, n_vocab: int, output: np.ndarray) -> None:
    # zero attention and feed-forward: the one-hot embedding reaches the output unchanged
    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", np.eye(n_vocab, N_EMBD, dtype=np.float32))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", np.zeros((N_EMBD, N_EMBD), np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((N_FF, N_EMBD), np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((N_FF, N_EMBD), np.float32))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((N_EMBD, N_FF), np.float32))


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimmyProcess]:
    models = tmp_path_factory.mktemp("web-models")
    write_spelling_model(models / "alpha.gguf", ALPHA_TEXT, chat_template=ENDS_WITH_BOS)
    write_gguf(models / "broken.gguf", arch="notanarch")
    write_piece_model(models / "endless.gguf", ENDLESS_PIECES, loop=True,
                      context_length=ENDLESS_CONTEXT)
    write_piece_model(models / "evil.gguf", EVIL_PIECES)
    home = tmp_path_factory.mktemp("web-home")
    process = ShimmyProcess(["--model-dirs", str(models), "--parallel", "2"],
                            isolated_env(home), home)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, port: int, *, bypass_csp: bool = False):
    context = browser.new_context(bypass_csp=bypass_csp, viewport={"width": 1100, "height": 800})
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.locator("#model option")).to_have_count(4)
    return page


@pytest.fixture
def page(browser, web_server: ShimmyProcess) -> Iterator:
    page = open_page(browser, web_server.port)
    yield page
    page.context.close()


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def answer(page, index: int = -1):
    """The ``index``-th assistant message (default: the last)."""
    messages = page.locator(".message.assistant")
    return messages.nth(index) if index >= 0 else messages.last


def wait_for_answer(page, index: int = -1):
    message = answer(page, index)
    expect(message.locator(".stats")).to_contain_text("token")
    expect(page.locator("#send")).to_be_visible()
    return message


def slots_busy(port: int, model: str) -> int:
    status, body = request_json(port, "GET", "/api/models")
    assert status == 200, body
    [entry] = [m for m in body["models"] if m["id"] == model]
    return entry.get("slots", {}).get("busy", 0)


# --- tests --------------------------------------------------------------------------------


def test_page_lists_models_and_streams_an_answer(page) -> None:
    options = page.locator("#model option")
    assert options.all_text_contents() == ["alpha", "broken", "endless", "evil"]
    assert page.input_value("#model") == "alpha"  # the server's default comes first
    expect(page.locator("#server-status")).to_have_text("4 models available")
    send(page, "Say hello")
    message = wait_for_answer(page)
    expect(page.locator(".message.user .body")).to_have_text("Say hello")
    expect(message.locator(".who")).to_have_text("alpha")
    expect(message.locator(".body")).to_have_text(ALPHA_TEXT)
    stats = message.locator(".stats").text_content()
    assert "12 tokens" in stats  # 11 bytes and the end-of-text token, from the usage chunk
    assert "tok/s" in stats and "first token" in stats, stats
    assert page.locator("#prompt").input_value() == ""


def test_stream_grows_and_stop_frees_the_server_slot(page, web_server: ShimmyProcess) -> None:
    page.select_option("#model", "endless")
    send(page, "Count forever")
    body = answer(page).locator(".body")
    expect(body).to_contain_text("tick tock")
    expect(page.locator("#stop")).to_be_visible()
    lengths = []
    for _ in range(3):
        lengths.append(len(body.text_content()))
        time.sleep(0.25)
    assert lengths == sorted(set(lengths)), f"the answer does not grow as it streams: {lengths}"
    assert slots_busy(web_server.port, "endless") == 1
    expect(answer(page).locator(".stats")).to_contain_text("tok/s")  # live while streaming

    page.click("#stop")
    expect(answer(page).locator(".stats")).to_contain_text("Stopped")
    expect(page.locator("#send")).to_be_visible()
    assert wait_until(lambda: slots_busy(web_server.port, "endless") == 0, timeout=5), \
        "the server kept generating after Stop"
    stopped_at = len(body.text_content())
    time.sleep(0.3)
    assert len(body.text_content()) == stopped_at
    assert "reached max tokens" not in answer(page).locator(".stats").text_content()


def test_new_chat_while_streaming_forgets_the_answer(page, web_server: ShimmyProcess) -> None:
    page.select_option("#model", "endless")
    send(page, "Count forever")
    expect(answer(page).locator(".body")).to_contain_text("tick")
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)
    expect(page.locator("#send")).to_be_visible()
    assert wait_until(lambda: slots_busy(web_server.port, "endless") == 0, timeout=5)
    page.select_option("#model", "alpha")
    with page.expect_request("**/v1/chat/completions") as caught:
        send(page, "Fresh start")
    wait_for_answer(page)
    assert json.loads(caught.value.post_data)["messages"] == [
        {"role": "user", "content": "Fresh start"}]


def test_settings_history_and_switching_models(page) -> None:
    page.click("#toggle-settings")
    page.fill("#system", "Answer briefly.")
    page.fill("#temperature", "0.3")
    page.fill("#max-tokens", "64")
    send(page, "First question")
    wait_for_answer(page)
    page.select_option("#model", "evil")
    expect(page.locator(".note")).to_contain_text("Switched to evil")
    with page.expect_request("**/v1/chat/completions") as caught:
        send(page, "Second question")
    sent = json.loads(caught.value.post_data)
    second = wait_for_answer(page)
    expect(second.locator(".who")).to_have_text("evil")
    expect(second.locator("h3")).to_have_text("Title")
    assert sent["model"] == "evil"
    assert sent["stream"] is True
    assert sent["temperature"] == 0.3
    assert sent["max_tokens"] == 64
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "First question"},
        {"role": "assistant", "content": ALPHA_TEXT},
        {"role": "user", "content": "Second question"},
    ]
    page.click("#new-chat")
    expect(page.locator(".message")).to_have_count(0)


def test_model_output_is_shown_as_text_never_run(browser, web_server: ShimmyProcess) -> None:
    # without the page's Content-Security-Policy: the rendering alone must keep it inert
    page = open_page(browser, web_server.port, bypass_csp=True)
    try:
        page.select_option("#model", "evil")
        send(page, "Show me some HTML")
        message = wait_for_answer(page)
        body = message.locator(".body")
        page.wait_for_timeout(300)  # time for an <img onerror> to fire, were there one
        assert page.evaluate("typeof window.pwned") == "undefined"
        text = body.text_content()
        assert SCRIPT in text and IMG in text
        assert body.locator("script, img, iframe, [onerror]").count() == 0
        expect(body.locator("strong")).to_have_text("bold")
        expect(body.locator("p code")).to_have_text("<b>code</b>")
        expect(body.locator("figure.code pre code")).to_have_text(SCRIPT)
        expect(body.locator("figure.code figcaption span")).to_have_text("html")
        links = body.locator("a")
        expect(links).to_have_count(1)  # the javascript: link stays text
        assert links.get_attribute("href") == "https://example.org/x"
        assert links.get_attribute("rel") == "noopener noreferrer"
        assert "[click me](javascript:window.pwned=1)" in text
    finally:
        page.context.close()


def test_errors_are_explained_in_words(page) -> None:
    page.select_option("#model", "broken")
    send(page, "Hello?")
    error = answer(page).locator(".error")
    expect(error).to_contain_text("The server failed to answer")
    expect(error).to_contain_text("could not be loaded")
    expect(page.locator(".message.user.unsent")).to_have_count(1)
    assert page.input_value("#prompt") == "Hello?"  # ready to send again

    page.select_option("#model", "alpha")
    page.click("#toggle-settings")
    send(page, "Too long " * 3000)  # more than the model's context holds
    error = answer(page).locator(".error")
    expect(error).to_contain_text("the context of a slot")
    expect(error).to_contain_text("Lower Max tokens")

    page.route("**/v1/chat/completions", lambda route: route.abort())
    send(page, "Anyone there?")
    expect(answer(page).locator(".error")).to_contain_text("Cannot reach the shimmy server")


def test_the_page_and_its_assets_come_from_the_server(page, web_server: ShimmyProcess) -> None:
    requested: list[str] = []
    page.on("request", lambda req: requested.append(req.url))
    page.reload()
    expect(page.locator("#model option")).to_have_count(4)
    origin = f"http://127.0.0.1:{web_server.port}/"
    assert requested and all(url.startswith(origin) for url in requested), requested


def test_a_server_with_an_api_key_gets_it_from_the_settings(browser, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    write_spelling_model(models / "alpha.gguf", ALPHA_TEXT, chat_template=ENDS_WITH_BOS)
    home = tmp_path / "home"
    home.mkdir()
    server = ShimmyProcess(["--model-dirs", str(models), "--parallel", "1", "--api-key", "s3cret"],
                           isolated_env(home), home)
    context = browser.new_context()
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")  # the page itself needs no key
        expect(page.locator("#server-status")).to_contain_text("needs an API key")
        page.click("#toggle-settings")
        page.fill("#api-key", "s3cret")
        page.press("#api-key", "Tab")  # the change event: the page lists the models again
        expect(page.locator("#model option")).to_have_count(1)
        send(page, "Hello")
        expect(wait_for_answer(page).locator(".body")).to_have_text(ALPHA_TEXT)
    finally:
        context.close()
        server.stop()


def test_the_page_shows_how_far_a_model_has_loaded(browser, tmp_path: Path) -> None:
    models = tmp_path / "models"
    slow_context = 1 << 20  # 1.3 GB of KV cache: a load of a second or more
    write_spelling_model(models / "slow.gguf", ALPHA_TEXT, chat_template=ENDS_WITH_BOS,
                         context_length=slow_context)
    home = tmp_path / "home"
    home.mkdir()
    server = ShimmyProcess(["--model-dirs", str(models), "--parallel", "1",
                            "--ctx", str(slow_context)], isolated_env(home), home)
    context = browser.new_context()
    context.set_default_timeout(30_000)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        expect(page.locator("#model option")).to_have_count(1)
        # every text the answer's footer shows, however briefly
        page.evaluate("""() => {
            window.footers = [];
            new MutationObserver(() => document.querySelectorAll(".stats")
                .forEach((footer) => window.footers.push(footer.textContent)))
                .observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        send(page, "Hello")
        expect(answer(page).locator(".stats")).to_contain_text("token", timeout=120_000)
        expect(answer(page).locator(".body")).to_have_text(ALPHA_TEXT)
        footers = page.evaluate("window.footers")
        shares = [int(m.group(1)) for text in footers
                  if (m := re.fullmatch(r"loading slow… (\d+)%", text))]
        assert shares and all(0 <= share <= 100 for share in shares), footers
        assert shares == sorted(shares)
    finally:
        context.close()
        server.stop()

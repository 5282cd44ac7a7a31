"""The OpenAI-compatible server on stories260K, driven by the official openai client over 127.0.0.1.

One server (max batch 8, an API key) serves most tests; a second, tiny one (batch 1, queue 1, a 10-block cache)
checks back-pressure. Outputs are compared with the same request run alone and with the engine called in-process.
"""
from __future__ import annotations

import concurrent.futures
import socket
import threading
import time

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from minillama import Drugs, Engine  # noqa: E402
from minillama.sampling.adaptive_cli import build_adaptive  # noqa: E402
from minillama.sampling.params import SamplingParams  # noqa: E402
from minillama.server.app import create_app  # noqa: E402
from test_engine import poison_rows_from  # noqa: E402

KEY = "test-key"
STORY = "Once upon a time"


class RunningServer:
    """uvicorn serving `app` from a thread, on a socket this process bound to a free 127.0.0.1 port."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "RunningServer":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = self.health()
            if state["running_sequences"] == 0 and state["waiting_requests"] == 0:
                return state
            assert time.monotonic() < deadline, f"the server is still busy: {state}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def engine(stories_dir):
    return Engine.from_pretrained(stories_dir)


@pytest.fixture(scope="module")
def reference(stories_dir):
    """A second engine on the same model, run in-process, for what a request should produce."""
    return Engine.from_pretrained(stories_dir)


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, model_name="stories260K", max_batch=8, max_queue=512, api_key=KEY)
    with RunningServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def chat(client, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "Tell me a story."}])
    return client.chat.completions.create(model="stories260K", **kwargs)


def streamed(chunks) -> tuple[dict[int, str], dict[int, str]]:
    """Texts and finish reasons per choice index from a chat or completion stream."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            texts[choice.index] = texts.get(choice.index, "") + (piece or "")
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    return texts, finish


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["stories260K"]
    assert server.health()["status"] == "ok"


def test_chat_streamed_text_equals_non_streamed(client, engine, reference):
    whole = chat(client, max_tokens=30, seed=7)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens > 0
    texts, finish = streamed(chat(client, max_tokens=30, seed=7, stream=True))
    assert texts == {0: whole.choices[0].message.content}
    assert finish == {0: whole.choices[0].finish_reason}
    # the same as the engine in-process with llama.cpp's default chain (what a request without sampling fields gets)
    template = reference.tokenizer.chat_template
    ids = reference.tokenizer.encode(template.render([{"role": "user", "content": "Tell me a story."}]), bos=False)
    expected = reference.generate(ids, max_new_tokens=30, seed=7, stop=list(template.stop_strings),
                                  sampler=SamplingParams().to_sampler(reference.tokenizer))
    assert whole.choices[0].message.content == expected.text


def test_completion_n_choices_stream_and_not(client):
    kwargs = dict(model="stories260K", prompt=STORY, max_tokens=20, n=3, seed=11, temperature=1.2)
    whole = client.completions.create(**kwargs)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    texts = [c.text for c in whole.choices]
    assert len(set(texts)) > 1                      # each sample has its own random stream
    assert 0 < whole.usage.completion_tokens <= 60
    streamed_texts, finish = streamed(client.completions.create(stream=True, **kwargs))
    assert streamed_texts == dict(enumerate(texts))
    assert finish == {c.index: c.finish_reason for c in whole.choices}


def test_stop_strings(client):
    free = client.completions.create(model="stories260K", prompt=STORY, max_tokens=40, seed=3, temperature=0)
    text = free.choices[0].text
    stop = text.split()[4]                          # a word from the middle of the unconstrained answer
    cut = text[:text.index(stop)]
    stopped = client.completions.create(model="stories260K", prompt=STORY, max_tokens=40, seed=3, temperature=0,
                                        stop=[stop, "never appears"])
    assert stopped.choices[0].text == cut
    assert stopped.choices[0].finish_reason == "stop"
    texts, finish = streamed(client.completions.create(model="stories260K", prompt=STORY, max_tokens=40, seed=3,
                                                       temperature=0, stop=stop, stream=True))
    assert texts == {0: cut} and finish == {0: "stop"}


def test_drugs_request_matches_engine(client, reference):
    dose = {"dose_theta": 1.5, "sites": "H,Q,K,V", "sink_protect": 2}
    reply = client.completions.create(model="stories260K", prompt=STORY, max_tokens=24, seed=5, temperature=0,
                                      extra_body={"drugs": dose})
    ids = reference.tokenizer.encode(STORY, bos=True)
    greedy = SamplingParams(temp=0).to_sampler(reference.tokenizer)
    drugged = reference.generate(ids, max_new_tokens=24, seed=5, sampler=greedy, drugs=Drugs(**dose))
    clean = reference.generate(ids, max_new_tokens=24, seed=5, sampler=greedy)
    assert reply.choices[0].text == drugged.text
    assert drugged.text != clean.text               # the noise does change this greedy answer


@pytest.mark.parametrize("spec", [{"type": "entropy"}, {"type": "rdnet", "base": "chain", "mix": 0.5},
                                  {"type": "alpha", "lookahead": True}])
def test_adaptive_sampler_request_matches_engine(client, reference, spec):
    reply = client.completions.create(model="stories260K", prompt=STORY, max_tokens=16, seed=9,
                                      extra_body={"sampler": spec, "top_k": 20})
    tok = reference.tokenizer
    chain = SamplingParams(top_k=20).to_sampler(tok)
    options = {k: v for k, v in spec.items() if k != "type"}
    sampler = build_adaptive(spec["type"], options, chain, tokenizer=tok)
    expected = reference.generate(tok.encode(STORY, bos=True), max_new_tokens=16, seed=9, sampler=sampler)
    assert reply.choices[0].text == expected.text


def _error(call) -> tuple[int, dict]:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value.status_code, info.value.response.json()["error"]


@pytest.mark.parametrize("extra, param", [
    ({"n": 0}, "n"), ({"n": "two"}, "n"), ({"n": 9}, "n"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 10_000}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"), ({"top_k": 1.5}, "top_k"), ({"min_p": 2}, "min_p"),
    ({"samplers": ["top_k", "bogus"]}, "samplers"), ({"mirostat": 3}, "mirostat"),
    ({"stop": 5}, "stop"), ({"stream": "yes"}, "stream"), ({"logprobs": True}, "logprobs"),
    ({"drugs": {"dose_theta": -1, "sites": "K"}}, "drugs"), ({"drugs": {"dose": 1}}, "drugs"),
    ({"drugs": {"dose_theta": 0.3, "sites": "K", "dose_shape": [1.0, 1.0]}}, "drugs"),
    ({"sampler": {"type": "nope"}}, "sampler"), ({"sampler": {"type": "entropy", "bogus": 1}}, "sampler"),
    ({"messages": []}, "messages"), ({"messages": [{"content": "no role"}]}, "messages[0]"),
])
def test_bad_fields_get_400_naming_them(client, extra, param):
    status, error = _error(lambda: client.chat.completions.create(
        **{"model": "stories260K", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
           "extra_body": extra}))
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param and error["message"]


def test_other_bad_requests_and_the_server_keeps_serving(server, client):
    long_prompt = " ".join(["once upon a time"] * 200)
    status, error = _error(lambda: client.completions.create(model="m", prompt=long_prompt, max_tokens=4))
    assert status == 400 and error["code"] == "context_length_exceeded" and "context" in error["message"]
    status, error = _error(lambda: client.completions.create(model="m", prompt=[1, 2, 99_999], max_tokens=4))
    assert status == 400 and error["param"] == "prompt"
    bad_json = httpx.post(f"{server.url}/v1/completions", content=b"{\"prompt\": ",
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    not_object = httpx.post(f"{server.url}/v1/completions", json=[1, 2], headers={"Authorization": f"Bearer {KEY}"})
    assert not_object.status_code == 400
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        denied = httpx.post(f"{server.url}/v1/chat/completions", headers=headers,
                            json={"messages": [{"role": "user", "content": "Hi"}]})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert client.completions.create(model="m", prompt=STORY, max_tokens=3, seed=1).choices[0].text


def test_concurrent_requests_give_what_each_gives_alone(server, client):
    seeds = list(range(100, 108))

    def ask(seed: int) -> str:
        return chat(client, max_tokens=40, seed=seed, temperature=1.0).choices[0].message.content

    alone = [ask(s) for s in seeds]
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(ask, seeds))
    assert together == alone
    assert len(set(alone)) > 1


def test_disconnect_mid_stream_frees_blocks(server):
    baseline = server.wait_idle()
    headers = {"Authorization": f"Bearer {KEY}"}
    no_eos = {str(server.app.state.scheduler.engine.tokenizer.eos_ids[0]): -100}
    body = {"prompt": STORY, "stream": True, "seed": 1, "logit_bias": no_eos}     # runs to the context end
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.health()["running_sequences"] == 1
    after = server.wait_idle()
    assert after["cancelled_requests"] == baseline["cancelled_requests"] + 1
    assert after["used_blocks"] == baseline["used_blocks"]
    # a non-streaming request whose client gives up waiting is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json={**body, "stream": False}, headers=headers, timeout=0.5)
    after = server.wait_idle()
    assert after["cancelled_requests"] == baseline["cancelled_requests"] + 2
    assert after["used_blocks"] == baseline["used_blocks"]


def test_load_a_few_hundred_small_requests(server):
    baseline = server.wait_idle()
    headers = {"Authorization": f"Bearer {KEY}"}
    words = ["cat", "dog", "sun", "tree", "boat", "ball"]

    def one(i: int) -> int:
        body = {"prompt": f"The {words[i % len(words)]} and the {words[(i // 6) % len(words)]}", "max_tokens": 3,
                "seed": i, "n": 1 + i % 2, "stream": i % 3 == 0}
        if i % 7 == 0:
            body = {"messages": [{"role": "user", "content": f"Hi {i}"}], "max_tokens": 3, "seed": i}
        url = f"{server.url}/v1/{'chat/completions' if 'messages' in body else 'completions'}"
        response = http.post(url, json=body, headers=headers, timeout=60)
        assert response.status_code == 200, response.text
        assert "[DONE]" in response.text if body.get("stream") else response.json()["choices"]
        return response.status_code

    with httpx.Client() as http, concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200
    after = server.wait_idle()
    assert after["done_requests"] - baseline["done_requests"] == 200
    assert after["failed_requests"] == baseline["failed_requests"]
    assert after["used_blocks"] == baseline["used_blocks"]


def test_queue_bound_gives_503(stories_dir):
    """A batch of one and a queue of one: while one request runs and one waits, a third gets 503. The engine's
    decode step is held at a gate meanwhile, so nothing finishes before the test has looked."""
    small = Engine.from_pretrained(stories_dir)
    gate = threading.Event()
    step = small.step
    small.step = lambda streams: (gate.wait(30), step(streams))
    with RunningServer(create_app(small, model_name="tiny", max_batch=1, max_queue=1)) as srv, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        def post():
            return httpx.post(f"{srv.url}/v1/completions", json={"prompt": STORY, "max_tokens": 3}, timeout=60)

        def wait_for(running: int, waiting: int) -> None:
            deadline = time.monotonic() + 20
            while (lambda h: (h["running_sequences"], h["waiting_requests"]))(srv.health()) != (running, waiting):
                assert time.monotonic() < deadline, srv.health()
                time.sleep(0.01)

        first = pool.submit(post)
        wait_for(1, 0)
        second = pool.submit(post)
        wait_for(1, 1)
        refused = post()
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "server_error" and refused.json()["error"]["code"] == "server_busy"
        gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert srv.wait_idle()["used_blocks"] == 0


def test_full_block_pool_makes_requests_wait(stories_dir):
    """A 10-block cache: a request that could never fit is a 400; requests of 4 blocks each (prompt + 40 tokens,
    plus one for copy-on-write) run two at a time though the batch has room for four, and give their own answers."""
    small = Engine.from_pretrained(stories_dir, max_cache_tokens=160)
    no_eos = {str(small.tokenizer.eos_ids[0]): -100}
    with RunningServer(create_app(small, model_name="tiny", max_batch=4, max_queue=8)) as srv:
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0, timeout=60)
        status, error = _error(lambda: client.completions.create(model="m", prompt=STORY, max_tokens=300))
        assert status == 400 and error["param"] == "max_tokens"
        args = [dict(model="m", prompt=f"{STORY} {w}", max_tokens=40, seed=i, temperature=1.0, logit_bias=no_eos)
                for i, w in enumerate(["cat", "dog", "sun", "sea"])]
        alone = [client.completions.create(**a).choices[0].text for a in args]
        with concurrent.futures.ThreadPoolExecutor(len(args)) as pool:
            together = list(pool.map(lambda a: client.completions.create(**a).choices[0].text, args))
        assert together == alone
        state = srv.wait_idle()
        assert state["used_blocks"] == 0 and state["failed_requests"] == 0


def test_one_failing_request_does_not_fail_its_batch_mates(stories_dir):
    """Two requests decode in one batch; the long one's logits turn NaN a few tokens in. It alone gets a 500: the
    short one finishes as it would alone, and every block is freed. The first decode step waits at a gate until
    the second request is queued, so it joins the batch after one step."""
    small = Engine.from_pretrained(stories_dir)
    long_prompt = " ".join([STORY] * 3)
    poison_rows_from(small, len(small.tokenizer.encode(long_prompt, bos=True)) + 3)
    gate = threading.Event()
    step = small.step
    small.step = lambda streams: (gate.wait(30), step(streams))
    no_eos = {str(small.tokenizer.eos_ids[0]): -100}
    with RunningServer(create_app(small, model_name="tiny", max_batch=4, max_queue=4)) as srv, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        def post(prompt: str, tokens: int):
            return httpx.post(f"{srv.url}/v1/completions", timeout=60,
                              json={"prompt": prompt, "max_tokens": tokens, "logit_bias": no_eos})

        def wait_for(running: int, waiting: int) -> None:
            deadline = time.monotonic() + 20
            while (lambda h: (h["running_sequences"], h["waiting_requests"]))(srv.health()) != (running, waiting):
                assert time.monotonic() < deadline, srv.health()
                time.sleep(0.01)

        long = pool.submit(post, long_prompt, 20)
        wait_for(1, 0)
        short = pool.submit(post, "Once", 5)
        wait_for(1, 1)
        gate.set()
        assert short.result().status_code == 200
        failed = long.result()
        assert failed.status_code == 500 and "NaN" in failed.json()["error"]["message"]
        state = srv.wait_idle()
        assert state["used_blocks"] == 0 and state["failed_requests"] == 1

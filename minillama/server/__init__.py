"""`python -m minillama serve`: an OpenAI-compatible HTTP server with continuous batching.

    protocol.py   request bodies -> GenerationRequest (sampler, drugs, prompt ids), OpenAI's error object
    scheduler.py  the one thread that owns the engine: admits requests between decode steps, steps them together
    app.py        the Starlette app: endpoints, server-sent events, API key, disconnects
    bench.py      aggregate decode throughput with 1, 4, 16 concurrent streams (in-process, no HTTP)

Only bench.py and the scheduler import without the optional `serve` extra (starlette, uvicorn); app.py needs it.
"""

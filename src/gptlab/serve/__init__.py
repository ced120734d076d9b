"""Serve a gptlab model over Ollama's and OpenAI's REST APIs, so their clients (and gptlab's
own judge) can talk to it.

Ollama:  POST /api/generate, POST /api/chat (NDJSON streaming by default, or one JSON object
         with "stream": false), GET /api/tags, POST /api/show
OpenAI:  POST /v1/chat/completions, POST /v1/completions (SSE streaming with "stream": true),
         GET /v1/models

Prompts are the served model's own tokens (a GGUF file's or a folder's tokenizer; GPT-2's for
GPT-2) and generation stops at its stop ids (eos, end of turn). Chat endpoints render the
messages in the model's chat template when its tokenizer has one; otherwise they fold them into
the Alpaca instruction template (gptlab.prompts) and stop where the model starts a new "###"
section. /api/generate templates its prompt too unless "raw": true (see ollama); the OpenAI
completion endpoint continues the prompt as is. Text a client sends never becomes a special
token: only a chat template's own special tokens are.

One worker thread owns the model; the event loop only parses requests and streams text back.
Requests with the same sampling settings are generated together as one left-padded batch (a
request arriving later joins a running batch), and every batch advances one token per turn,
so concurrent streams all make progress. A batch has its own KV cache, shared with no other
batch, and a seeded request always runs alone with its own random generator, so a greedy or
seeded request gets exactly the text it would get alone.

Modules, each importing only those above it:
- engine:   the batching worker (ApiError, Job, Batch, Engine); no web framework
- schemas:  the pydantic request bodies of both dialects
- service:  what both dialects share: the model, its tokenizer, its name, the engine, the
            request helpers
- errors:   each dialect's error shape, validation messages, the request-size guard
- ollama, openai:  each dialect's routes
- markdown: a small safe Markdown renderer (every text escaped) for report.md
- browse:   the runs browser's JSON API over the run folders of `--runs DIR`
- web:      the page at / (static/: chat and runs browser), the --api-key check
- app:      `create_app`, putting them together
- server:   `run_server` (uvicorn on a bound socket) and the default port

Importing this package imports none of them (nor FastAPI).
"""

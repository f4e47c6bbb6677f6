"""`promptlift serve`: an OpenAI-compatible proxy that applies learned prompts in front of any LLM.

    promptlift serve --prompt runs/sst2 --upstream http://127.0.0.1:8001/v1 --name sentiment
    promptlift serve --prompt runs/sst2-soft --upstream local
    promptlift serve --config serve.yaml          # many routes, keys, limits: examples/serve.yaml

Clients use any OpenAI SDK with `base_url=http://127.0.0.1:8000/v1` and
`model=<route name>`; the header `X-Promptlift-Prompt: NAME` picks another
artifact of the route.

Modules (side effects only in `routes`, `upstream`, `server`, `cli`, and `ratelimit`'s shared file):
    config    serve.yaml / command line -> ServeConfig (validation, one-line errors)
    apply     text artifact + request -> upstream messages, through the core's render (pure)
    embeds    soft artifact + request -> vLLM prompt_embeds (pure compute)
    local     the in-process model, batching requests with different artifacts; log-probabilities
              through the applied prompt (so `promptlift eval --model openai:ROUTE` = local eval)
    upstream  HTTP upstream: pooled connections, timeouts, retries, error mapping
    auth      hashed bearer keys
    ratelimit the per-key requests-per-minute limit (off unless configured): in memory, or a SQLite
              file the worker processes share
    protocol  OpenAI error bodies and completion/SSE shapes
    metrics   Prometheus collectors
    routes    config -> live routes (loads and verifies artifacts; what outlives a reload)
    app       the FastAPI app
    server    uvicorn in the foreground, in N worker processes behind one port, or in a thread
    cli       the `promptlift serve` command
"""

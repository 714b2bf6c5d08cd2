"""`diffgen serve`: one loaded model, many clients (AUTOMATIC1111's API, OpenAI's images API, a page).

The modules, each one concern:

- ``options``: the server's settings and the checks made before anything starts (safe defaults)
- ``catalog``: the checkpoints clients may choose, by name, from one folder (never a path)
- ``generation``: one request's images, checked like the CLI's, sampled through ``Model.sample``
- ``worker``: the one sampling thread, its bounded queue, progress, interruption and shutdown
- ``uploads``: images sent as base64, checked and kept by content hash (so recipes replay)
- ``a1111`` / ``openai_images``: the two APIs' field names and response shapes
- ``guard``: API keys, HTTP basic auth and the request-body size limit, as ASGI middleware
- ``page``: the page at ``/`` (plain HTML and a little JavaScript)
- ``app`` / ``server``: the ASGI application and uvicorn around it (SIGTERM finishes the batch)

Only ``options`` is imported without the ``serve`` extra (FastAPI and uvicorn).
"""

"""The naive design the benchmark compares against: one image per request, no batching.

A minimal FastAPI app (as the service's original design had) calling the same
inference core in Starlette's thread pool, served by one uvicorn process:

    uvicorn bench.naive_server:app --port 8000
"""

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from detector.decoding import BadImageError
from detector.inference import CorruptionDetector, error_body
from detector.paths import SHIPPED_WEIGHTS

WEIGHTS = Path(os.environ.get("WEIGHTS", SHIPPED_WEIGHTS))

app = FastAPI()
detector = CorruptionDetector(WEIGHTS)


@app.post("/predictions/corruption")
async def predict(request: Request) -> JSONResponse:
    """Score the raw request body on its own."""
    result = (await run_in_threadpool(detector.predict, [await request.body()]))[0]
    if isinstance(result, BadImageError):
        return JSONResponse(error_body(result), status_code=400)
    return JSONResponse(result)

"""The baseline of ``serve_load.py``: one uvicorn process, no Ray, the same lookup and prediction.

It reuses the app's own pieces (body limit, pydantic-core parsing, the
``FlightScorer.score_now`` for features and model, JSON out), so the benchmark
measures what Serve adds, not a difference in handler code. Scoring is per
request: a plain process has no ``@serve.batch`` to gather requests with.

    MLSYS_HOME=... BARE_USER_CONFIG='{...}' python -m uvicorn benchmarks.bare_app:app --port 8011
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ml_system.serving.http import HTTPProblem, json_response, parse_body, problem_response, read_body
from ml_system.usecases.flights.serve_app import MAX_BODY_BYTES, FlightScorer, PredictRequest, _row

app = FastAPI()
scorer = FlightScorer("flight_delay", "champion", os.environ.get("MLSYS_HOME"))
scorer.reconfigure(json.loads(os.environ.get("BARE_USER_CONFIG", "{}")))


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "model_version": scorer.version}


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        payload = parse_body(PredictRequest, await read_body(request, MAX_BODY_BYTES))
    except HTTPProblem as problem:
        return problem_response(problem)
    flights = payload.flights
    probs, missing = scorer.score_now([_row(f) for f in flights])
    preds = [
        {
            "carrier": f.carrier,
            "flight": f.flight,
            "delay_probability": p,
            "delayed": p >= scorer.threshold,
            "missing_features": m,
        }
        for f, p, m in zip(flights, probs, missing, strict=True)
    ]
    return json_response({"predictions": preds, "model_name": "flight_delay", "model_version": scorer.version})

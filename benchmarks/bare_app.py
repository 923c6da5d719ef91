"""The baseline of ``serve_load.py``: one uvicorn process, no Ray, the same lookup and prediction.

It reuses the app's own pieces (body limit, pydantic-core parsing of the use case's request
model, ``Scorer.score_now`` for features and model, the use case's response, JSON out), so the
benchmark measures what Serve adds, not a difference in handler code. Scoring is per request: a
plain process has no ``@serve.batch`` to gather requests with.

    MLSYS_HOME=... BARE_USECASE=flights BARE_USER_CONFIG='{...}' python -m uvicorn benchmarks.bare_app:app --port 8011
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from ml_system.serving.http import HTTPProblem, json_response, parse_body, problem_response, read_body
from ml_system.serving.openapi import request_model
from ml_system.serving.scorer import Scorer, ScoreRow
from ml_system.serving.settings import MAX_BODY_BYTES

app = FastAPI()
scorer = Scorer(os.environ.get("BARE_USECASE", "flights"), home=os.environ.get("MLSYS_HOME"))
scorer.reconfigure(json.loads(os.environ.get("BARE_USER_CONFIG", "{}")))
spec = scorer.usecase.serving
assert spec is not None
Body = request_model(scorer.usecase)


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok", "model_version": scorer.version}


@app.post("/predict")
async def predict(request: Request) -> Response:
    try:
        payload = parse_body(Body, await read_body(request, MAX_BODY_BYTES))
    except HTTPProblem as problem:
        return problem_response(problem)
    items = getattr(payload, spec.items_field)
    scored = scorer.score_now([ScoreRow(spec.entity_row(i), spec.event_time(i)) for i in items])
    threshold = scorer.threshold
    preds = []
    for item, score, missing in zip(items, scored.scores, scored.missing, strict=True):
        answer = spec.respond(item, score, None if threshold is None else score >= threshold)
        answer["missing_features"] = missing
        preds.append(answer)
    return json_response({"predictions": preds, "model_name": scorer.model_name, "model_version": scorer.version})

"""HTTP app of the flight-delay use case: ingress -> online features -> model.

The ingress validates the payload (pydantic), computes the on-demand features
from the request, reads the online features in one query per view, and sends
the assembled matrix to the batched model deployment.

Unknown airports, tail numbers or carriers are not errors: the flight is still
scored, the affected features are treated as missing (XGBoost's learned default
branch), and the response lists them under ``missing_features``. Feature
freshness is judged against the flight's scheduled departure: a value older
than the view's TTL at that moment counts as missing.
"""

import asyncio
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ml_system.features import FeatureStatus, FeatureStore
from ml_system.serving.model_deployment import XGBoostModel, platform_config
from ml_system.usecases.flights.features import ondemand_features

MAX_BODY_BYTES = 1_000_000


class Flight(BaseModel):
    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", examples=["UA"])
    flight: int = Field(ge=1, le=9999, examples=[1545])
    tailnum: str | None = Field(default=None, pattern=r"^[A-Z0-9]{1,8}$", examples=["N14228"])
    origin: str = Field(pattern=r"^[A-Z]{3}$", examples=["EWR"])
    dest: str = Field(pattern=r"^[A-Z]{3}$", examples=["IAH"])
    sched_dep_time: AwareDatetime = Field(
        description="Scheduled departure with its UTC offset, e.g. 2013-12-31T18:30:00-05:00",
        examples=["2013-12-31T18:30:00-05:00"],
    )


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flights: list[Flight] = Field(min_length=1)


class Prediction(BaseModel):
    carrier: str
    flight: int
    delay_probability: float
    delayed: bool
    missing_features: list[str]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


api = FastAPI(
    title="ml_system flight delay",
    description="Probability that a departure from New York is more than 15 minutes late.",
    version="1",
)


@api.middleware("http")
async def limit_body(request: Request, call_next: Any) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return JSONResponse(status_code=413, content={"detail": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"})
    return await call_next(request)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress(api)
class FlightDelayAPI:
    def __init__(self, model: DeploymentHandle, home: str | None = None, max_rows: int = 1000) -> None:
        self.model = model
        self.config = platform_config(home)
        self.max_rows = max_rows
        self._ready: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    async def _model_info(self) -> dict[str, Any]:
        if self._ready is None:
            async with self._lock:
                if self._ready is None:
                    info = await self.model.describe.remote()
                    store = FeatureStore(self.config)
                    reader = store.online_reader(feature_service=info["feature_service"])
                    self._ready = {**info, "reader": reader}
        return self._ready

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        info = await self._model_info()
        return {"status": "ok", "model_name": info["model_name"], "model_version": info["model_version"]}

    @api.post("/predict", response_model=PredictResponse)
    async def predict(self, body: PredictRequest) -> Any:
        if len(body.flights) > self.max_rows:
            return JSONResponse(
                status_code=413,
                content={"detail": f"field 'flights' holds {len(body.flights)} rows; the limit is {self.max_rows}"},
            )
        info = await self._model_info()
        matrix, missing = self._assemble(body.flights, info)
        scored = await self.model.predict.remote(matrix)
        threshold = float(info["threshold"])
        preds = [
            Prediction(
                carrier=f.carrier,
                flight=f.flight,
                delay_probability=float(p),
                delayed=bool(p >= threshold),
                missing_features=m,
            )
            for f, p, m in zip(body.flights, scored["probabilities"], missing, strict=True)
        ]
        return PredictResponse(predictions=preds, model_name=info["model_name"], model_version=scored["model_version"])

    def _assemble(self, flights: list[Flight], info: dict[str, Any]) -> tuple[np.ndarray, list[list[str]]]:
        reader = info["reader"]
        sched = pd.Series([f.sched_dep_time for f in flights]).map(pd.Timestamp)
        sched = pd.to_datetime(sched, utc=True)
        rows = [
            {"origin": f.origin, "tailnum": f.tailnum or "", "carrier": f.carrier, "route": f"{f.origin}-{f.dest}"}
            for f in flights
        ]
        online = reader.read(rows, now=[t.to_pydatetime() for t in sched])
        ondemand = ondemand_features(sched)
        columns: dict[str, Any] = {**online.values, **{c: ondemand[c].to_numpy() for c in ondemand.columns}}
        matrix = np.empty((len(flights), len(info["feature_columns"])), dtype=np.float32)
        for j, name in enumerate(info["feature_columns"]):
            matrix[:, j] = np.asarray([np.nan if v is None else v for v in columns[name]], dtype=np.float32)
        view_of = {name: view.name for view, feats in reader.plan for name, _ in feats}
        missing: list[list[str]] = []
        for i in range(len(flights)):
            views = sorted({view_of[n] for n, st in online.statuses.items() if st[i] is not FeatureStatus.PRESENT})
            missing.append(views)
        return matrix, missing


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for ``serve run``/``serve deploy`` (``args`` from the YAML)."""
    model_name = str(args.get("model_name", "flight_delay"))
    alias = str(args.get("alias", "champion"))
    home = args.get("home")
    model = XGBoostModel.bind(model_name, alias, home)
    return FlightDelayAPI.bind(model, home, int(args.get("max_rows", 1000)))


def flights_from_frame(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Request payload rows from raw flights (for the quickstart and the load tests)."""
    out = []
    for row in frame.itertuples(index=False):
        sched: datetime = pd.Timestamp(row.sched_dep_ts).tz_convert("America/New_York").to_pydatetime()
        out.append(
            {
                "carrier": str(row.carrier),
                "flight": int(row.flight),
                "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum),
                "origin": str(row.origin),
                "dest": str(row.dest),
                "sched_dep_time": sched.isoformat(),
            }
        )
    return out

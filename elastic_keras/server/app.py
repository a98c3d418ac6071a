"""The HTTP face: a Starlette app speaking the Open Inference Protocol over a batching backend."""

from __future__ import annotations

import asyncio
import io
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from elastic_keras.server import protocol as P
from elastic_keras.server.engine import QueueFull

MAX_BODY = 32 * 2**20  # bytes (--max-body-mb)


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past `limit` bytes, before or while it arrives."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise P.ProtocolError(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise P.ProtocolError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Handlers:
    """The routes of one served model over its backend (an engine.Engine, or Ray's)."""

    def __init__(self, served, backend, metrics, max_body: int = MAX_BODY):
        from elastic_keras.server.feedback import Recent

        self.served, self.backend, self.metrics, self.max_body = served, backend, metrics, max_body
        self.recent = Recent()

    def _model(self, request: Request) -> None:
        name = request.path_params["name"]
        if name != self.served.name:
            raise P.ProtocolError(404, f"unknown model {name!r}; this server serves "
                                       f"{self.served.name!r}")

    async def _run(self, request: Request, images, params, rid):
        """Submit images; the finished Job, or None when the client went away first (its
        images then leave the queues unrun)."""
        try:
            job = self.backend.submit(images, request_id=rid, **params)
        except QueueFull as e:
            raise P.ProtocolError(503, f"queue full: {e}; retry later") from None
        answer = asyncio.wrap_future(job.future)
        watch = asyncio.ensure_future(_gone(request))
        try:
            await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not answer.done():
            self.backend.cancel(job)
            return None
        try:
            result = answer.result()
        except Exception as e:  # the runtime failed on this batch
            raise P.ProtocolError(500, f"inference failed: {type(e).__name__}: {e}") from None
        self.metrics.latency.observe(time.monotonic() - job.start)
        self.recent.keep(result)
        return result

    async def infer(self, request: Request) -> Response:
        self._model(request)
        body = await _body(request, self.max_body)
        req = P.parse_infer(body, request.headers.get(P.HEADER_LENGTH), self.served.shape,
                            self.served.exits)
        job = await self._run(request, req.images, req.parameters, req.id)
        if job is None:
            return Response(status_code=499)
        data, headers = P.encode_infer(self.served.name, req,
                                       P.answer_tensors(job, self.served.path_macs),
                                       {"threshold": _threshold(job, self.backend)})
        return Response(data, headers=headers)

    async def classify(self, request: Request) -> Response:
        """A PNG or JPEG body, converted as `predict` converts files; JSON answer."""
        from elastic_keras.errors import ElasticKerasError
        from elastic_keras.inference.images import read_image

        self._model(request)
        params = {}
        for key, value in request.query_params.items():
            try:
                params[key] = float(value)
            except ValueError:
                raise P.ProtocolError(400, f"parameter {key} must be a number, got "
                                           f"{value!r}") from None
        params = P.check_parameters(params, self.served.exits)
        body = await _body(request, self.max_body)
        try:
            x, converted = read_image(io.BytesIO(body), self.served.shape, name="in the body")
        except ElasticKerasError as e:
            raise P.ProtocolError(400, str(e)) from None
        job = await self._run(request, x[None], params, None)
        if job is None:
            return Response(status_code=499)
        k, names = int(job.exits[0]), self.served.class_names
        cls = int(job.classes[0])
        return JSONResponse({
            "class": cls, "class_name": names[cls] if names else None,
            "confidence": float(job.probabilities[0].max()), "exit": k,
            "exit_name": self.served.exit_names[k - 1], "forced": bool(job.forced[0]),
            "macs": int(self.served.path_macs[k - 1]), "threshold": _threshold(job, self.backend),
            "converted": converted})

    async def feedback(self, request: Request) -> Response:
        self._model(request)
        body = P._json(await _body(request, self.max_body))
        return JSONResponse(self.recent.feedback(body, self.backend))

    async def metadata(self, request: Request) -> Response:
        from elastic_keras.server.feedback import metadata

        self._model(request)
        return JSONResponse(metadata(self.served, self.backend))

    async def ready(self, request: Request) -> Response:
        self._model(request)
        return JSONResponse({"name": self.served.name, "ready": True})


def _threshold(job, backend):
    value = job.threshold if job.threshold is not None else backend.threshold
    return None if not np.isfinite(value) or value > 1 else float(value)


def build_app(served, backend, metrics, max_body: int = MAX_BODY) -> Starlette:
    """The routes of the protocol, the PNG route, online control's feedback, /metrics; every
    error a one-line JSON body (protocol.ProtocolError), counted by status."""
    h = Handlers(served, backend, metrics, max_body)

    def wrap(handler):
        async def endpoint(request: Request) -> Response:
            try:
                response = await handler(request)
            except P.ProtocolError as e:
                response = Response(e.body(), status_code=e.status,
                                    media_type="application/json",
                                    headers={"retry-after": "1"} if e.status == 503 else None)
            metrics.requests.labels(str(response.status_code)).inc()
            return response
        return endpoint

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        return JSONResponse({"ready": True})

    async def server(request):
        return JSONResponse({"name": "elastic-keras", "version": "0.1.0",
                             "extensions": ["binary_tensor_data", "parameters"]})

    async def prometheus(request):
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    async def error(request, exc):  # unknown routes and methods: one JSON line too
        metrics.requests.labels(str(exc.status_code)).inc()
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}"},
                            status_code=exc.status_code)

    model = "/v2/models/{name}"
    return Starlette(exception_handlers={404: error, 405: error}, routes=[
        Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server),
        Route(model, wrap(h.metadata)), Route(model + "/ready", wrap(h.ready)),
        Route(model + "/infer", wrap(h.infer), methods=["POST"]),
        Route(model + "/classify", wrap(h.classify), methods=["POST"]),
        Route(model + "/feedback", wrap(h.feedback), methods=["POST"]),
        Route("/metrics", prometheus)])

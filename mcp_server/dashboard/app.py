"""The dashboard's web application: a page for people, the JSON it polls, and its two buttons.

Safe by construction (each rule has a test in tests/dashboard):
- it listens on 127.0.0.1 only (`serve.run`);
- every request carries the dashboard's random token, in the URL's `token` (the page) or the
  `X-Trainguard-Token` header (what the page's script sends), compared in constant time;
- the `Host` header must name this dashboard (127.0.0.1 or localhost with its port), so a
  DNS-rebinding page cannot reach it under a name of its own;
- a state-changing request (stop, resume) is a POST with the token in the header, never the
  URL, and is refused when its `Origin` (or `Sec-Fetch-Site`) says another site sent it;
- nothing of the page loads from the network: the script and styles are files of this package,
  and the Content-Security-Policy allows only this origin.
Stop and resume go through the same functions as the tools (`runs.stop`, `runs.resume_run`).
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mcp_server import gpu, paths, runs
from mcp_server.compare import compare_runs
from mcp_server.dashboard import views
from mcp_server.errors import InvalidInput, NotFound, TrainguardError

log = logging.getLogger("trainguard.dashboard")
STATIC = Path(__file__).resolve().parent / "static"
TOKEN_HEADER = "x-trainguard-token"  # noqa: S105 - the header's name, not a secret
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL: never sent on
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}


class Guard:
    """ASGI middleware: the token, the Host and, for a POST, the origin, before anything else."""

    def __init__(self, app: Any, token: str, port: int):
        self.app, self.token, self.port = app, token, port
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{host}" for host in self.hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            log.warning("refused %s %s: %s", request.method, request.url.path, refusal)
            response = _json({"error": refusal}, 403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> str | None:
        if request.headers.get("host", "") not in self.hosts:
            return "wrong Host header: open the dashboard at the URL trainguard printed (127.0.0.1)"
        header = request.headers.get(TOKEN_HEADER, "")
        if request.method == "POST":
            origin = request.headers.get("origin")
            if origin is not None and origin not in self.origins:
                return "cross-origin request refused"
            if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                return "cross-site request refused"
            given = header  # a state change takes the token from the header only, never the URL
        elif request.method in ("GET", "HEAD"):
            given = header or request.query_params.get("token", "")
        else:
            return f"method {request.method} not allowed"
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return "missing or wrong token: open the URL trainguard printed (it carries ?token=...)"
        return None


class OrjsonResponse(JSONResponse):
    """JSON by orjson: a run page's curves are thousands of numbers, encoded every poll."""

    def render(self, content: Any) -> bytes:
        # NaN and infinity go as null: the page's JSON.parse could not read them
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _json(data: Any, status: int = 200) -> JSONResponse:
    return OrjsonResponse(data, status_code=status, headers=SECURITY_HEADERS)


def _error(exc: BaseException) -> JSONResponse:
    if isinstance(exc, NotFound):
        return _json({"error": str(exc)}, 404)
    if isinstance(exc, InvalidInput | TrainguardError):
        return _json({"error": str(exc)}, 400)
    log.exception("dashboard request failed")
    return _json({"error": f"{type(exc).__name__}: {exc}"[:300]}, 500)


def _since(request: Request) -> str | None:
    since = request.query_params.get("since")
    return since if since and len(since) <= 64 else None


def make_app(project: Path, token: str, port: int) -> Guard:
    """The application for `project`, behind its guard."""
    pages = views.Views(project, gpu.shared_sampler(paths.runs_root(project)))

    async def call(fn: Any, *args: Any) -> JSONResponse:
        try:
            return _json(await anyio.to_thread.run_sync(fn, *args))
        except Exception as exc:  # noqa: BLE001 - every failure is an answer the page can show
            return _error(exc)

    # The page's own files need the token too (every request does): the page names them with it.
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    for name in ("app.js", "app.css"):
        html = html.replace(f"static/{name}", f"static/{name}?token={token}")

    async def page(request: Request) -> Response:
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("app.js", "app.css"):
            return _json({"error": "no such file"}, 404)
        return FileResponse(STATIC / name, headers=SECURITY_HEADERS)

    async def runs_list(request: Request) -> Response:
        q = request.query_params
        filters = [q.get(k) or None for k in ("experiment", "status", "sweep")]
        return await call(pages.runs, *filters, _since(request))

    async def run_one(request: Request) -> Response:
        return await call(pages.run, request.path_params["run_id"], _since(request))

    async def gpus(request: Request) -> Response:
        try:
            since = float(request.query_params.get("since", "")) if request.query_params.get("since") else None
        except ValueError:
            return _json({"error": "since is the time of the last sample the page has (a number)"}, 400)
        return await call(pages.gpus, since)

    async def compare(request: Request) -> Response:
        ids = [i for i in request.query_params.get("runs", "").split(",") if i][:20]
        metric = request.query_params.get("metric") or None

        def both() -> dict[str, Any]:
            table = compare_runs(ids, metric, None, project=project).model_dump(mode="json", exclude_none=True)
            return {"table": table, "curves": [pages.curve(i, table["metric"]) for i in ids]}

        return await call(both)

    async def stop(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return await call(lambda: runs.stop(run_id, 30.0, project).model_dump(mode="json"))

    async def resume(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        return await call(
            lambda: runs.resume_run(run_id, note="resumed from the dashboard", project=project).model_dump(
                mode="json", exclude_none=True
            )
        )

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/static/{name}", static),
            Route("/api/runs", runs_list),
            Route("/api/runs/{run_id}", run_one),
            Route("/api/runs/{run_id}/stop", stop, methods=["POST"]),
            Route("/api/runs/{run_id}/resume", resume, methods=["POST"]),
            Route("/api/gpus", gpus),
            Route("/api/compare", compare),
        ]
    )
    return Guard(app, token, port)

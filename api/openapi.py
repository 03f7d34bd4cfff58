"""The OpenAPI 3 description of the whole API, served at /swagger.json (hand-written: it is the contract).

NodeODM clients read errors from HTTP 200 answers ({"error": ...}), so most 200 responses are "the
result, or the NodeODM error form". tests/api/test_openapi.py checks that every Flask route is described
here, and a schemathesis pass (tests/e2e/test_openapi_fuzz.py) checks the live farm against it.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
MULTIPART = "multipart/form-data"
URLENCODED = "application/x-www-form-urlencoded"
SCHEMAS = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": SCHEMAS + name}


def json_200(description: str, schema: dict[str, Any], *, errors: bool = True) -> dict[str, Any]:
    """HTTP 200 with a JSON body: `schema`, or (on NodeODM routes) the NodeODM error form."""
    body = {"anyOf": [schema, ref("Error")]} if errors else schema
    return {"200": {"description": description, "content": {JSON: {"schema": body}}}}


def uuid_path(description: str = "the task's uuid") -> dict[str, Any]:
    # any text: an unknown or malformed uuid is answered with {"error": "<uuid> not found"}
    return {
        "name": "uuid",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def form_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A body that arrives urlencoded (PyODM, CloudODM), multipart (ClusterODM) or as JSON (custom clients)."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {
        "required": False,
        "content": {URLENCODED: {"schema": schema}, MULTIPART: {"schema": schema}, JSON: {"schema": schema}},
    }


INIT_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "description": "a name for the task (default: `Task of <date>`)"},
    "options": {
        "type": "string",
        "description": 'ODM options as JSON text: `[{"name": "dsm", "value": true}]` (see /options)',
    },
    "skipPostProcessing": {"type": "string", "description": '"true" skips point cloud tiles, COGs and glTF'},
    "webhook": {
        "type": "string",
        "description": "a URL that gets a POST of the task info when the task ends",
    },
    "outputs": {"type": "string", "description": "JSON list of project-relative paths all.zip should hold"},
    "dateCreated": {"type": "integer", "description": "creation time, milliseconds since the epoch"},
}
SET_UUID = {
    "name": "set-uuid",
    "in": "header",
    "required": False,
    "description": "the uuid the new task gets (must be a UUID not used yet)",
    "schema": {"type": "string"},
}
IMAGES = {
    "type": "array",
    "items": {"type": "string", "format": "binary"},
    "description": "image files (and GCP, geo, seed.zip)",
}

READY_BODY = {
    "status": {"type": "string", "enum": ["ready", "not ready"]},
    "failed": {"type": "array", "items": {"type": "string", "enum": ["redis", "store", "workers"]}},
    "checks": {"type": "object", "additionalProperties": {"type": "string"}},
}

COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "token": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": "the node's token (ODM_FARM_TOKEN)",
        },
        "metricsBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "ODM_FARM_METRICS_TOKEN for /metrics (the node token when that is not set)",
        },
    },
    "schemas": {
        "Error": {
            "type": "object",
            "description": "The NodeODM error form, at HTTP 200. Commands add success: false; noRetry: "
            "true means sending the same request again can never succeed.",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "success": {"type": "boolean", "enum": [False]},
                "noRetry": {"type": "boolean", "enum": [True]},
            },
            "additionalProperties": False,
        },
        "Success": {
            "type": "object",
            "required": ["success"],
            "properties": {"success": {"type": "boolean", "enum": [True]}},
            "additionalProperties": False,
        },
        "Uuid": {
            "type": "object",
            "required": ["uuid"],
            "properties": {"uuid": {"type": "string", "format": "uuid"}},
            "additionalProperties": False,
        },
        "Info": {
            "type": "object",
            "required": [
                "version",
                "taskQueueCount",
                "totalMemory",
                "availableMemory",
                "cpuCores",
                "maxImages",
                "maxParallelTasks",
                "engineVersion",
                "engine",
            ],  # fmt: skip
            "properties": {
                "version": {"type": "string", "description": "the NodeODM API version"},
                "taskQueueCount": {"type": "integer", "minimum": 0, "description": "tasks queued or running"},
                "totalMemory": {"type": "integer", "minimum": 0},
                "availableMemory": {"type": "integer", "minimum": 0},
                "cpuCores": {"type": "integer", "minimum": 0},
                "maxImages": {"type": "integer", "nullable": True, "description": "null when unlimited"},
                "maxParallelTasks": {"type": "integer", "minimum": 0},
                "engineVersion": {"type": "string"},
                "engine": {"type": "string"},
                "workers": {"type": "integer", "minimum": 0, "description": "live workers (an extension)"},
            },
        },
        "Option": {
            "type": "object",
            "required": ["name", "type", "value", "domain", "help"],
            "properties": {
                "name": {"type": "string"},
                "type": {"type": "string", "enum": ["int", "float", "string", "bool", "enum"]},
                "value": {"type": "string"},
                "domain": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "help": {"type": "string"},
            },
            "additionalProperties": False,  # PyODM builds NodeOption(**o): any other key crashes it
        },
        "TaskInfo": {
            "type": "object",
            "required": [
                "uuid",
                "name",
                "dateCreated",
                "processingTime",
                "status",
                "options",
                "imagesCount",
                "progress",
            ],
            "properties": {
                "uuid": {"type": "string"},
                "name": {"type": "string"},
                "dateCreated": {"type": "integer"},
                "processingTime": {"type": "integer", "minimum": -1, "description": "ms; -1 before start"},
                "status": {
                    "type": "object",
                    "required": ["code"],
                    "properties": {
                        "code": {
                            "type": "integer",
                            "enum": [10, 20, 30, 40, 50],
                            "description": "10 QUEUED, 20 RUNNING, 30 FAILED, 40 COMPLETED, 50 CANCELED",
                        },
                        "errorMessage": {"type": "string"},
                    },
                },
                "options": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "value"],
                        "properties": {"name": {"type": "string"}, "value": {}},
                    },
                },
                "imagesCount": {"type": "integer", "minimum": 0},
                "progress": {"type": "number", "minimum": 0, "maximum": 100},
                "output": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "with ?with_output=N",
                },
            },
        },
    },
}

DOWNLOAD_HEADERS = {
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "Content-Disposition": {"schema": {"type": "string"}},
    "Content-Length": {"schema": {"type": "string"}},
}
BINARY = {"type": "string", "format": "binary"}


def _paths() -> dict[str, Any]:
    public: list[Any] = []  # no token needed
    command_fields = {"uuid": {"type": "string"}}
    command_query = [
        {
            "name": "uuid",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "instead of the body",
        },
    ]
    return {
        "/info": {
            "get": {
                "summary": "The node: API version, queue, capacity (summed over live workers), engine",
                "parameters": [
                    {
                        "name": "_debugUnauthorized",
                        "in": "query",
                        "required": False,
                        "description": "any value: a bare HTTP 401 (for client test suites)",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    **json_200("the node", ref("Info")),
                    "401": {"description": "asked by _debugUnauthorized"},
                },
            }
        },
        "/options": {
            "get": {
                "summary": "The ODM options every live engine accepts",
                "responses": json_200("the options", {"type": "array", "items": ref("Option")}),
            }
        },
        "/auth/info": {
            "get": {
                "summary": "How to authenticate: the node token, or user accounts' login URL (?token= either way)",
                "security": public,
                "responses": json_200(
                    "authentication details",
                    {
                        "type": "object",
                        "required": ["message", "loginUrl", "registerUrl"],
                        "properties": {
                            "message": {"type": "string"},
                            "loginUrl": {"type": "string", "nullable": True},
                            "registerUrl": {"type": "string", "nullable": True},
                        },
                    },
                ),
            }
        },
        "/auth/login": {
            "post": {
                "summary": "A login token for a username and password (ODM_FARM_ACCOUNTS), passed as ?token=",
                "description": "Failed logins are limited per user and per address. Without accounts the "
                "answer is the error form.",
                "security": public,
                "requestBody": form_body({"username": {"type": "string"}, "password": {"type": "string"}}),
                "responses": json_200(
                    "the token",
                    {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}},
                ),
            }
        },
        "/auth/register": {
            "post": {
                "summary": "Create an account and its first token (open with ODM_FARM_REGISTRATION, else "
                "the node token or an admin's token)",
                "security": public,
                "requestBody": form_body({"username": {"type": "string"}, "password": {"type": "string"}}),
                "responses": json_200(
                    "the new user's token",
                    {
                        "type": "object",
                        "required": ["success", "token"],
                        "properties": {"success": {"type": "boolean"}, "token": {"type": "string"}},
                    },
                ),
            }
        },
        "/task/new/init": {
            "post": {
                "summary": "Start an upload session (then upload, then commit)",
                "parameters": [SET_UUID],
                "requestBody": form_body(INIT_FIELDS),
                "responses": json_200("the new task's uuid", ref("Uuid")),
            }
        },
        "/task/new/upload/{uuid}": {
            "post": {
                "summary": "Add files to an upload session (a file sent again replaces the first copy)",
                "parameters": [uuid_path("the upload session")],
                "requestBody": {
                    "required": True,
                    "content": {MULTIPART: {"schema": {"type": "object", "properties": {"images": IMAGES}}}},
                },
                "responses": json_200("stored", ref("Success")),
            }
        },
        "/task/new/commit/{uuid}": {
            "post": {
                "summary": "Turn an upload session into a task; answers at once, processing is asynchronous",
                "parameters": [uuid_path("the upload session")],
                "responses": json_200("the task's uuid", ref("Uuid")),
            }
        },
        "/task/new": {
            "post": {
                "summary": "Create a task in one request: files, or a zipurl the node downloads",
                "parameters": [SET_UUID],
                "requestBody": {
                    "required": False,
                    "content": {
                        MULTIPART: {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    **INIT_FIELDS,
                                    "images": IMAGES,
                                    "zipurl": {"type": "string", "description": "a URL of a zip of images"},
                                },
                            }
                        },
                        URLENCODED: {
                            "schema": {
                                "type": "object",
                                "properties": {**INIT_FIELDS, "zipurl": {"type": "string"}},
                            }
                        },
                        JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {**INIT_FIELDS, "zipurl": {"type": "string"}},
                            }
                        },
                    },
                },
                "responses": json_200("the task's uuid", ref("Uuid")),
            }
        },
        "/task/list": {
            "get": {
                "summary": "Every task, in creation order (a page of them with limit)",
                "parameters": [
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "description": "skip this many tasks (ODM Farm extension; default 0)",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "at most this many tasks (ODM Farm extension; default: every task)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                    },
                ],
                "responses": json_200(
                    "the tasks",
                    {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["uuid"],
                            "properties": {"uuid": {"type": "string"}},
                        },
                    },
                ),
            }
        },
        "/task/{uuid}/info": {
            "get": {
                "summary": "A task's state, options and progress",
                "parameters": [
                    uuid_path(),
                    {
                        "name": "with_output",
                        "in": "query",
                        "required": False,
                        "description": "add console lines from this line (negative: the last N)",
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": json_200("the task", ref("TaskInfo")),
            }
        },
        "/task/{uuid}/output": {
            "get": {
                "summary": "A task's console lines",
                "parameters": [
                    uuid_path(),
                    {
                        "name": "line",
                        "in": "query",
                        "required": False,
                        "description": "from this line (negative: the last N)",
                        "schema": {"type": "integer"},
                    },
                ],
                "responses": json_200("console lines", {"type": "array", "items": {"type": "string"}}),
            }
        },
        "/task/{uuid}/download/{asset}": {
            "parameters": [
                uuid_path(),
                {
                    "name": "asset",
                    "in": "path",
                    "required": True,
                    "description": "all.zip, or one of the single assets (e.g. orthophoto.tif)",
                    "schema": {"type": "string"},
                },
                {
                    "name": "Range",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "bytes=a-b",
                },
            ],
            "get": {"summary": "Download a finished task's results", "responses": _download_responses()},
            "head": {"summary": "Size and headers of a download", "responses": _download_responses()},
        },
        "/task/cancel": {
            "post": {
                "summary": "Cancel a task (its engine is stopped)",
                "parameters": command_query,
                "requestBody": form_body(command_fields),
                "responses": json_200("cancelled", ref("Success")),
            }
        },
        "/task/remove": {
            "post": {
                "summary": "Cancel a task and delete everything of it",
                "parameters": command_query,
                "requestBody": form_body(command_fields),
                "responses": json_200("removed", ref("Success")),
            }
        },
        "/task/restart": {
            "post": {
                "summary": "Run a failed, completed or cancelled task again, optionally with new options",
                "parameters": [
                    *command_query,
                    {"name": "options", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
                "requestBody": form_body({**command_fields, "options": INIT_FIELDS["options"]}),
                "responses": json_200("restarted", ref("Success")),
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness for load balancers: 200 while the process answers (an extension)",
                "security": public,
                "responses": {
                    "200": _json_object("alive", {"status": {"type": "string", "enum": ["ok"]}}),
                },
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: Redis and the object store answer and a worker is alive (an extension)",
                "security": public,
                "responses": {
                    "200": _json_object("ready", READY_BODY),
                    "503": _json_object("not ready: `failed` names the checks that failed", READY_BODY),
                },
            }
        },
        "/workers": {
            "get": {
                "summary": "The live worker hosts (an extension)",
                "responses": {
                    **json_200("the workers", {"type": "array", "items": {"type": "object"}}),
                    "503": _json_object("Redis does not answer", {"error": {"type": "string"}}),
                },
            }
        },
        "/farm": {
            "get": {
                "summary": "Workers, queue depth per queue and why queued tasks cannot start (an extension)",
                "responses": {
                    **json_200("the farm", FARM_BODY),
                    "503": _json_object("Redis does not answer", {"error": {"type": "string"}}),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (an extension): tasks, durations, queues, workers, bytes, webhooks",
                "description": "Authenticate with `Authorization: Bearer <ODM_FARM_METRICS_TOKEN>`; when no "
                "metrics token is set, the node token works as bearer or as ?token=.",
                "security": [{"metricsBearer": []}, {"token": []}],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {
                        "description": "missing or wrong token",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "503": _json_object("Redis does not answer", {"error": {"type": "string"}}),
                },
            }
        },
        "/swagger.json": {
            "get": {
                "summary": "This description",
                "security": public,
                "responses": {
                    "200": {"description": "OpenAPI 3", "content": {JSON: {"schema": {"type": "object"}}}}
                },
            }
        },
        "/": {
            "get": {
                "summary": "The web app: tasks, uploads, options, results and the farm's workers",
                "description": "Its API calls pass the token of the page's ?token= (or of a login).",
                "security": public,
                "responses": {
                    "200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}},
                    "304": {"description": "not modified (If-None-Match)"},
                    "503": _json_object("Redis does not answer", {"error": {"type": "string"}}),
                },
            }
        },
        "/web/{version_id}/{name}": {
            "get": {
                "summary": "The web app's modules and styles, cached for a year under the current version",
                "security": public,
                "parameters": [
                    {"name": "version_id", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "the asset",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                    "404": _json_object("no such asset", {"error": {"type": "string"}}),
                    "503": _json_object("Redis does not answer", {"error": {"type": "string"}}),
                },
            }
        },
    }


FARM_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["now", "workers", "queues", "warnings"],
    "properties": {
        "now": {"type": "integer", "description": "the server's clock, ms since 1970 (for `lastBeat` ages)"},
        "workers": {"type": "array", "items": {"type": "object"}},
        "queues": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    k: {"type": "integer"} for k in ("waiting", "running", "deferred", "workers", "slots")
                },
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}},
    },
}


def _json_object(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"schema": {"type": "object", "properties": properties}}},
    }


def _download_responses() -> dict[str, Any]:
    return {
        "200": _file_response(
            "the whole file; or the NodeODM error form (not ready, invalid asset)",
            {JSON: {"schema": ref("Error")}},
        ),
        "206": _file_response("the requested range"),
        "302": {"description": "a presigned object-store URL (ODM_FARM_DOWNLOAD_REDIRECT)"},
        "416": {"description": "the range is outside the file"},
    }


def _file_response(description: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A download answer: an archive or any other file, with the download headers."""
    content = {"application/zip": {"schema": BINARY}, "application/octet-stream": {"schema": BINARY}}
    return {"description": description, "headers": DOWNLOAD_HEADERS, "content": {**content, **(extra or {})}}


# gunicorn refuses these before the app sees them (no client of the NodeODM API sends such requests)
HTTP_SERVER_ERRORS = {
    "400": "malformed HTTP",
    "414": "request line (path and query) over 4094 bytes",
    "431": "a header over 8190 bytes, or over 100 headers",
}


def _with_server_errors(paths: dict[str, Any]) -> dict[str, Any]:
    html = {"text/html": {"schema": {"type": "string"}}}
    for item in paths.values():
        for method, operation in item.items():
            if method != "parameters":
                for code, why in HTTP_SERVER_ERRORS.items():
                    operation["responses"].setdefault(
                        code, {"description": f"{why} (refused by gunicorn)", "content": html}
                    )
    return paths


def openapi(version: str) -> dict[str, Any]:
    """The whole description; `version` is the node's NodeODM API version."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "ODM Farm",
            "version": version,
            "description": "The NodeODM API (as PyODM, WebODM, ClusterODM, CloudODM and ODM's split-merge use "
            "it), served by a farm of workers, plus a few routes for operators. Errors on the NodeODM routes "
            'are HTTP 200 with {"error": ...}.',
        },
        "security": [{"token": []}],
        "paths": _with_server_errors(_paths()),
        "components": COMPONENTS,
    }

"""The OpenAPI 3.1 description of the portal (served at /openapi.json), written next to the route table.

Hand-written: the routes are few, and the document says what matters to a client (the
credential, the clinic scope, the streaming and Range behaviour) better than a generator would.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"description": "JSON error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_AUTH_ERRORS = {"401": {**_ERROR, "description": "no, malformed, unknown, expired or revoked credential"},
                "429": {**_ERROR, "description": "rate limited or too busy; see Retry-After"}}
_FORMAT = {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["csv", "jsonl"], "default": "csv"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^job_[0-9a-f]{16}$"}}


def _json(description: str, schema: str | dict[str, Any]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def document(version: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "drp export portal", "version": version,
                 "description": "Self-service exports for one clinic. Every request carries a credential of exactly "
                                "one clinic (Authorization: Bearer <token>, or the session cookie); every answer is "
                                "about that clinic only. See docs/portal.md."},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "drpt.<id>.<secret> (operator token) or drps.<key id>.<payload>.<sig> "
                                          "(short-lived token signed by the SaaS backend)"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "drp_portal"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "fix": {"type": ["string", "null"]}}}}},
                "Credential": {"type": "object", "properties": {
                    "id": {"type": "string"}, "kind": {"enum": ["token", "signed"]},
                    "clinic_id": {"type": "string"}, "subject": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"}}},
                "Clinic": {"type": "object", "properties": {
                    "clinic_id": {"type": "string"}, "name": {"type": ["string", "null"]},
                    "credential": {"$ref": "#/components/schemas/Credential"},
                    "tables": {"type": "array", "items": {"type": "string"}},
                    "stream_formats": {"type": "array", "items": {"type": "string"}},
                    "export_formats": {"type": "array", "items": {"type": "string"}}}},
                "ExportRequest": {"type": "object", "additionalProperties": False, "properties": {
                    "formats": {"type": "array", "items": {"enum": ["parquet", "csv", "jsonl"]},
                                "default": ["parquet", "csv", "jsonl"]},
                    "tables": {"type": "array", "items": {"type": "string"}, "default": []},
                    "zip": {"type": "boolean", "default": False}}},
                "Export": {"type": "object", "properties": {
                    "job_id": {"type": "string"}, "state": {"enum": ["queued", "running", "succeeded", "failed",
                                                                     "expired"]},
                    "formats": {"type": "array", "items": {"type": "string"}},
                    "tables": {}, "zip_bundle": {"type": "boolean"}, "export_id": {"type": ["string", "null"]},
                    "rows": {"type": ["integer", "null"]}, "bytes": {"type": ["integer", "null"]},
                    "error": {"type": ["string", "null"]}, "requested_at": {"type": "string"},
                    "started_at": {"type": ["string", "null"]}, "finished_at": {"type": ["string", "null"]},
                    "expires_at": {"type": ["string", "null"]},
                    "run_id": {"type": ["string", "null"], "description": "the Dagster run of tenant_export that "
                               "runs this export (portal_dagster_url set), else null"},
                    "files": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "bytes": {"type": "integer"}, "sha256": {"type": "string"},
                        "format": {"type": "string"}, "href": {"type": "string"}}}},
                    "links": {"type": "object"}}},
                "Stream": {"type": "object", "properties": {
                    "attempt_id": {"type": "string"}, "status": {"enum": ["started", "succeeded", "failed",
                                                                          "abandoned"]},
                    "rows": {"type": ["integer", "null"]}, "bytes": {"type": ["integer", "null"]},
                    "sha256": {"type": ["string", "null"]}}},
            }},
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": {
            "/api/health": {"get": {"summary": "liveness (no credential, not audited)", "security": [],
                                    "responses": {"200": _json("ok", {"type": "object"})}}},
            "/api/session": {
                "post": {"summary": "exchange a token for an HttpOnly SameSite=Strict session cookie", "security": [],
                         "requestBody": {"content": {"application/json": {"schema": {
                             "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}}}},
                         "responses": {"200": _json("signed in", {"type": "object"}), **_AUTH_ERRORS,
                                       "400": _ERROR, "413": _ERROR, "415": _ERROR}},
                "delete": {"summary": "sign out (clears the cookie)", "responses": {"204": {"description": "done"}}}},
            "/api/clinic": {"get": {"summary": "the credential's clinic: id, name, tables, formats",
                                    "responses": {"200": _json("the clinic", "Clinic"), **_AUTH_ERRORS,
                                                  "403": _ERROR}}},
            "/api/data/{table}": {"get": {
                "summary": "one table of the clinic, streamed from one REPEATABLE READ snapshot",
                "description": "The body is byte for byte what `drp export` writes for the table. Headers: "
                               "Content-Disposition, X-Drp-Attempt-Id (GET /api/streams/{attempt_id} gives rows, "
                               "bytes and sha256 afterwards), X-Drp-Snapshot-At. A failure mid-stream cuts the "
                               "response off without its final chunk.",
                "parameters": [{"name": "table", "in": "path", "required": True, "schema": {"type": "string"},
                                "example": "public.patients"}, _FORMAT],
                "responses": {"200": {"description": "CSV or JSON Lines", "content": {
                    "text/csv": {}, "application/jsonl": {}}}, "400": _ERROR, "404": _ERROR, **_AUTH_ERRORS}}},
            "/api/data": {"get": {
                "summary": "every table of the clinic (or those named by table=...) as one zip, streamed",
                "description": "One file per table (as `drp export` names and writes them), manifest.json last "
                               "(rows, bytes, sha256 per file, snapshot time). A zip cut short has no central "
                               "directory: it does not open.",
                "parameters": [_FORMAT, {"name": "table", "in": "query", "schema": {"type": "array",
                                                                                 "items": {"type": "string"}}}],
                "responses": {"200": {"description": "zip", "content": {"application/zip": {}}},
                              "400": _ERROR, "404": _ERROR, **_AUTH_ERRORS}}},
            "/api/streams/{attempt_id}": {"get": {
                "summary": "outcome of a stream of this clinic (the trailer): status, rows, bytes, sha256",
                "parameters": [{"name": "attempt_id", "in": "path", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {"200": _json("the stream", "Stream"), "404": _ERROR, **_AUTH_ERRORS}}},
            "/api/exports": {
                "get": {"summary": "the clinic's full exports, newest first",
                        "responses": {"200": _json("the clinic's exports", {"type": "object", "properties": {"exports": {
                            "type": "array", "items": {"$ref": "#/components/schemas/Export"}}}}), **_AUTH_ERRORS}},
                "post": {"summary": "request a full export (runs in the portal's worker)",
                         "requestBody": {"content": {"application/json": {"schema": {
                             "$ref": "#/components/schemas/ExportRequest"}}}},
                         "responses": {"202": _json("queued; Location names it", "Export"), "400": _ERROR,
                                       "404": _ERROR, "413": _ERROR, "415": _ERROR, **_AUTH_ERRORS}}},
            "/api/exports/{job_id}": {"get": {
                "summary": "one export's state; files (with download links) once succeeded",
                "parameters": [_JOB_ID],
                "responses": {"200": _json("the export", "Export"), "404": _ERROR, **_AUTH_ERRORS}}},
            "/api/exports/{job_id}/files/{name}": {"get": {
                "summary": "download one file, its sha256 checked on the way; Range supported",
                "description": "Single byte ranges (206, Content-Range); a range starting past the end is 416. "
                               "A file whose stored bytes do not match its sha256 is cut off before its last chunk.",
                "parameters": [_JOB_ID, {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "Range", "in": "header", "schema": {"type": "string"},
                                "example": "bytes=1048576-"}],
                "responses": {"200": {"description": "the file"}, "206": {"description": "the range"},
                              "404": _ERROR, "409": _ERROR, "410": _ERROR, "416": _ERROR, **_AUTH_ERRORS}}},
        },
    }

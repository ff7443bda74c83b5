"""`/v1/files`: upload, list, retrieve, delete and download files, in OpenAI's shapes
(FORMATS.md §3), so `openai.OpenAI().files.*` works unchanged. Every route acts for the
caller's account only; another account's file is a 404, exactly like a missing one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response, StreamingResponse

from stepflash.accounts.files import (
    LIST_LIMIT,
    PURPOSES,
    AccountFiles,
    FileRecord,
    FileService,
    LocalBlobStore,
)
from stepflash.accounts.pricing import PriceList
from stepflash.accounts.storage_fees import StorageFees
from stepflash.api.auth import principal
from stepflash.api.deps import FastJSONResponse
from stepflash.core.errors import invalid

router = APIRouter(tags=["files"])

MAX_FORM_FIELDS = 8  # `purpose`, plus room for fields clients add and we ignore

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid purpose, empty file, wrong type, or too many files"},
    401: {"description": "Missing, invalid or revoked API key"},
    404: {"description": "No such file (in the caller's account)"},
    413: {"description": "The file is over its purpose's size limit"},
}

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(PURPOSES)},
                    },
                }
            }
        },
    }
}


def file_service(request: Request) -> FileService:
    """The app's file service, made on first use from the accounts' database and the
    settings: it keeps no state besides them, so there is nothing to open or close."""
    state = request.app.state
    service: FileService | None = getattr(state, "files", None)
    if service is None:
        settings = state.settings
        database = state.accounts.store.database
        service = FileService(
            database,
            LocalBlobStore(settings.files_directory),
            settings.files,
            StorageFees(database, PriceList(settings.billing)),
        )
        state.files = service
    return service


def account_files(request: Request) -> AccountFiles:
    """The caller's files, for the media stage to resolve `stepfile://` URLs."""
    return file_service(request).reader(principal(request).account_id)


def file_object(record: FileRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
    }


@router.post("/files", responses=ERROR_RESPONSES, response_model=None, openapi_extra=UPLOAD_BODY)
async def upload_file(request: Request) -> Response:
    """Multipart `file` and `purpose`. The body is bounded by the body-size middleware
    (the largest file limit plus a margin on this route); Starlette spools the file to disk
    past 1 MB, and the purpose's own limit is checked before the file is stored."""
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise invalid("send the file as the multipart field `file`", "file")
        if not isinstance(purpose, str):
            raise invalid(f"`purpose` is required: one of {', '.join(PURPOSES)}", "purpose")
        record = await file_service(request).upload(
            principal(request).account_id, purpose, upload.filename, upload.file
        )
    return FastJSONResponse(file_object(record))


@router.get("/files", responses=ERROR_RESPONSES, response_model=None)
async def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = Query(LIST_LIMIT, ge=1, le=LIST_LIMIT),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> Response:
    records, has_more = await file_service(request).list_files(
        principal(request).account_id, purpose=purpose, limit=limit, after=after, order=order
    )
    return FastJSONResponse(
        {
            "object": "list",
            "data": [file_object(record) for record in records],
            "first_id": records[0].id if records else None,
            "last_id": records[-1].id if records else None,
            "has_more": has_more,
        }
    )


@router.get("/files/{file_id}", responses=ERROR_RESPONSES, response_model=None)
async def retrieve_file(request: Request, file_id: str) -> Response:
    record = await file_service(request).get(principal(request).account_id, file_id)
    return FastJSONResponse(file_object(record))


@router.delete("/files/{file_id}", responses=ERROR_RESPONSES, response_model=None)
async def delete_file(request: Request, file_id: str) -> Response:
    await file_service(request).delete(principal(request).account_id, file_id)
    return FastJSONResponse({"id": file_id, "object": "file", "deleted": True})


@router.get("/files/{file_id}/content", responses=ERROR_RESPONSES, response_model=None)
async def file_content(request: Request, file_id: str) -> Response:
    record, chunks = await file_service(request).content(principal(request).account_id, file_id)
    return StreamingResponse(
        chunks, media_type=record.media_type, headers={"content-length": str(record.bytes)}
    )

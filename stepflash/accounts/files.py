"""Uploaded files (`/v1/files`): bytes on a pluggable blob store, metadata in the `files` table.

Blobs are named by file id, never by the uploader's filename, so no name can reach a path. A
blob is written to a temporary file beside its final place, fsynced and renamed, and its row
is inserted only once the blob is durable: a crash leaves at worst a blob without a row, never
a row without its bytes.

Every query is scoped to the caller's account; another account's file id is answered exactly
like an id that does not exist.

Types are decided by the bytes, not by the name or the declared type:

* `retrieval-image`: an image Pillow opens and verifies as JPEG, PNG, WebP or GIF.
* `retrieval-text`, `file-extract`: UTF-8 text (every byte is checked, and NUL is refused) or
  text with a UTF-16 byte-order mark; or a document recognised by its magic bytes: PDF, RTF,
  Office Open XML (docx, xlsx, pptx), OpenDocument and EPUB (zip archives, told apart by their
  members), and legacy Office files (OLE2 compound documents: doc, xls, ppt).
* `storage`: anything that is not empty.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import mimetypes
import os
import re
import struct
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from PIL import Image
from sqlalchemy import delete, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from stepflash.accounts.database import Database
from stepflash.accounts.schema import accounts, files
from stepflash.accounts.storage_fees import StorageFees, StoredFile
from stepflash.config import FileSettings
from stepflash.core.errors import ErrorKind, StepflashError, invalid
from stepflash.core.ids import time_ordered_id
from stepflash.media.rejection import MediaRejected

PURPOSES = ("file-extract", "retrieval-text", "retrieval-image", "storage")
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
CHUNK_BYTES = 1024 * 1024
MAX_FILENAME_CHARS = 255  # the column's width
MAX_EXTENSION_CHARS = 16  # kept when a long filename is shortened
LIST_LIMIT = 10_000  # OpenAI's default and maximum page
MAX_ZIP_ENTRIES = 10_000  # office documents hold tens to thousands

_BLOB_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_IMAGE_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"{\\rtf", "application/rtf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),  # legacy Office
)
_OOXML = {
    "word/document.xml": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xl/workbook.xml": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt/presentation.xml": (
        "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    ),
}
_ZIP_MIMETYPES = ("application/epub+zip", "application/vnd.oasis.opendocument.")
_ZIP_END_SIZE = 22  # the end-of-central-directory record, without its comment
_ZIP_END_SEARCH = _ZIP_END_SIZE + 0xFFFF  # the record, after a comment of at most 64 KiB
_TEXT_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

Family = Literal["image", "document", "text", "binary"]
_ACCEPTS: dict[str, tuple[frozenset[Family], str]] = {
    "retrieval-image": (frozenset({"image"}), "a JPEG, PNG, WebP or GIF image"),
    "retrieval-text": (frozenset({"text", "document"}), "UTF-8 text or a document"),
    "file-extract": (frozenset({"text", "document"}), "UTF-8 text or a document"),
    "storage": (frozenset({"image", "document", "text", "binary"}), "any file"),
}
_DOCUMENTS = "PDF, Word, Excel, PowerPoint, RTF, OpenDocument or EPUB"


# -- blobs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredBlob:
    bytes: int
    sha256: str


class BlobStore(Protocol):
    """Where file contents live. Names are file ids; the store never sees a user's filename."""

    async def put(self, name: str, source: BinaryIO) -> StoredBlob:
        """Store all of `source` under `name`, durably: readers see the whole blob or none."""
        ...

    async def open(self, name: str) -> AsyncIterator[bytes]:
        """The blob's chunks; raises FileNotFoundError at once when there is no such blob."""
        ...

    async def delete(self, name: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...


class LocalBlobStore:
    """Blobs as files in a local directory, spread over 256 subdirectories."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, name: str) -> Path:
        if not _BLOB_NAME.match(name):
            raise ValueError(f"invalid blob name {name!r}")
        return self.directory / name[-2:] / name

    async def put(self, name: str, source: BinaryIO) -> StoredBlob:
        return await asyncio.to_thread(self._put, self._path(name), source)

    @staticmethod
    def _put(path: Path, source: BinaryIO) -> StoredBlob:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(descriptor, "wb") as out:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(path.parent)  # the rename itself survives a crash
        return StoredBlob(size, digest.hexdigest())

    async def open(self, name: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._path(name).open, "rb")
        return _chunks(handle)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._path(name).unlink, missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


async def _chunks(handle: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


# -- what a file is ------------------------------------------------------------------------


def clean_filename(name: str | None) -> str:
    """The last path component, without control characters, at most 255 characters (the
    extension kept). Shown back to the caller only; it never names anything on disk."""
    base = re.split(r"[/\\]", name or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if len(base) > MAX_FILENAME_CHARS:
        stem, dot, extension = base.rpartition(".")
        if dot and stem and len(extension) <= MAX_EXTENSION_CHARS:
            base = f"{stem[: MAX_FILENAME_CHARS - len(extension) - 1]}.{extension}"
        else:
            base = base[:MAX_FILENAME_CHARS]
    return base or "upload"


def _image_type(source: BinaryIO) -> str | None:
    try:
        with Image.open(source, formats=tuple(_IMAGE_TYPES)) as image:
            image.verify()
            return _IMAGE_TYPES[image.format or ""]
    except Exception:  # Pillow raises many types for what is not an image it reads
        return None


def _zip_entries(source: BinaryIO) -> int | None:
    """The entry count in a zip's end record. Read first because zipfile loads the whole
    central directory, and a few megabytes of archive can list millions of entries."""
    size = source.seek(0, os.SEEK_END)
    source.seek(max(0, size - _ZIP_END_SEARCH))
    tail = source.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _ZIP_END_SIZE:
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)  # 0xFFFF for zip64: too many anyway
    return int(entries)


def _zip_document_type(source: BinaryIO) -> str | None:
    entries = _zip_entries(source)
    if entries is None or entries > MAX_ZIP_ENTRIES:
        return None
    source.seek(0)
    try:
        with zipfile.ZipFile(source) as archive:
            names = set(archive.namelist())
            for member, media_type in _OOXML.items():
                if member in names:
                    return media_type
            if "mimetype" in names:
                with archive.open("mimetype") as member_file:
                    declared = member_file.read(128).decode("ascii", "replace").strip()
                if declared.startswith(_ZIP_MIMETYPES):
                    return declared
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    return None


def _document_type(source: BinaryIO, head: bytes) -> str | None:
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    return _zip_document_type(source) if head.startswith(b"PK\x03\x04") else None


def _is_text(source: BinaryIO, head: bytes) -> bool:
    if head.startswith(_TEXT_BOMS):
        return True
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := source.read(CHUNK_BYTES):
            if b"\x00" in chunk:
                return False
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _text_type(filename: str) -> str:
    guessed, _encoding = mimetypes.guess_type(filename)
    return guessed if guessed and guessed.startswith("text/") else "text/plain"


def identify(source: BinaryIO, filename: str) -> tuple[Family, str]:
    """(family, media type) of a seekable file, read from its bytes; leaves it at the start."""
    source.seek(0)
    head = source.read(16)
    try:
        source.seek(0)
        if (image := _image_type(source)) is not None:
            return "image", image
        source.seek(0)
        if (document := _document_type(source, head)) is not None:
            return "document", document
        source.seek(0)
        if _is_text(source, head):
            return "text", _text_type(filename)
        return "binary", "application/octet-stream"
    finally:
        source.seek(0)


# -- the service ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    account_id: str
    filename: str
    purpose: str
    bytes: int
    media_type: str
    sha256: str
    created_at: int
    storage_billed_until: int

    @classmethod
    def of(cls, row: Any) -> FileRecord:
        return cls(**row._mapping)


def _not_found(file_id: str) -> StepflashError:
    return StepflashError(ErrorKind.NOT_FOUND, f"No such file: {file_id!r}", param="file_id")


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise invalid(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}", "purpose")


def _check_type(purpose: str, family: Family, media_type: str) -> None:
    families, wanted = _ACCEPTS[purpose]
    if family not in families:
        documents = f" ({_DOCUMENTS})" if "document" in families else ""
        raise StepflashError(
            ErrorKind.UNSUPPORTED_CONTENT,
            f"purpose {purpose} takes {wanted}{documents}; this file is {media_type}",
            param="file",
            code="unsupported_content_type",
        )


class FileService:
    """The files of every account; each method acts for one account only."""

    def __init__(
        self,
        database: Database,
        blobs: BlobStore,
        settings: FileSettings,
        fees: StorageFees,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self._blobs = blobs
        self._settings = settings
        self._fees = fees
        self._clock = clock

    def max_bytes(self, purpose: str) -> int:
        settings = self._settings
        return settings.max_bytes_storage if purpose == "storage" else settings.max_bytes_other

    async def upload(
        self, account: str, purpose: str, filename: str | None, source: BinaryIO
    ) -> FileRecord:
        """Check and store `source`, a seekable file already received (Starlette's spooled
        upload, bounded by the body-size limit), then record it if the account has room."""
        _check_purpose(purpose)
        size = source.seek(0, os.SEEK_END)
        limit = self.max_bytes(purpose)
        if size > limit:
            raise StepflashError(
                ErrorKind.PAYLOAD_TOO_LARGE,
                f"the file is {size} bytes; purpose {purpose} allows at most {limit} bytes",
                param="file",
            )
        if size == 0:
            raise invalid("the file is empty", "file")
        name = clean_filename(filename)
        family, media_type = await asyncio.to_thread(identify, source, name)
        _check_type(purpose, family, media_type)
        moment = self._clock()
        file_id = time_ordered_id("file-", moment)
        blob = await self._blobs.put(file_id, source)
        now = int(moment)
        record = FileRecord(
            file_id, account, name, purpose, blob.bytes, media_type, blob.sha256, now, now
        )
        try:
            await self._insert(record)
        except BaseException:
            await self._blobs.delete(file_id)
            raise
        return record

    async def _insert(self, record: FileRecord) -> None:
        """Insert the row unless the account is full. The first statement writes (creating
        the account row when the open server's local account has none), which on SQLite takes
        the database's write lock; on PostgreSQL the account row is then locked. Either way one
        account's uploads are counted one at a time: the limit is exact, across replicas too."""
        database = self._database
        async with database.begin() as connection:
            await connection.execute(
                database.insert_ignoring_duplicates(accounts).values(
                    id=record.account_id, created_at=record.created_at, balance=0, topup_total=0
                )
            )
            lock = select(accounts.c.id).where(accounts.c.id == record.account_id)
            await connection.execute(lock.with_for_update())
            count = await connection.scalar(
                select(func.count())
                .select_from(files)
                .where(files.c.account_id == record.account_id)
            )
            limit = self._settings.max_files_per_account
            if (count or 0) >= limit:
                raise invalid(
                    f"this account already stores the most files allowed ({limit}); "
                    "delete some first",
                    "file",
                )
            await connection.execute(insert(files).values(**asdict(record)))

    async def list_files(
        self,
        account: str,
        *,
        purpose: str | None = None,
        limit: int = LIST_LIMIT,
        after: str | None = None,
        order: Literal["asc", "desc"] = "desc",
    ) -> tuple[list[FileRecord], bool]:
        """A page of the account's files, newest first unless `order` is asc, and whether
        more follow. `after` is the last id of the previous page."""
        query = select(files).where(files.c.account_id == account)
        if purpose is not None:
            _check_purpose(purpose)
            query = query.where(files.c.purpose == purpose)
        key = tuple_(files.c.created_at, files.c.id)
        async with self._database.connect() as connection:
            if after is not None:
                cursor = await self._find(connection, account, after)
                if cursor is None:
                    raise invalid(f"`after` names no file of yours: {after!r}", "after")
                position = tuple_(cursor.created_at, cursor.id)
                query = query.where(key < position if order == "desc" else key > position)
            ordering = (
                (files.c.created_at.desc(), files.c.id.desc())
                if order == "desc"
                else (files.c.created_at, files.c.id)
            )
            rows = await connection.execute(query.order_by(*ordering).limit(limit + 1))
            records = [FileRecord.of(row) for row in rows]
        return records[:limit], len(records) > limit

    async def get(self, account: str, file_id: str) -> FileRecord:
        async with self._database.connect() as connection:
            record = await self._find(connection, account, file_id)
        if record is None:
            raise _not_found(file_id)
        return record

    async def content(self, account: str, file_id: str) -> tuple[FileRecord, AsyncIterator[bytes]]:
        """The record and its bytes, opened now: a file deleted meanwhile is a 404 here."""
        record = await self.get(account, file_id)
        try:
            return record, await self._blobs.open(file_id)
        except FileNotFoundError:
            raise _not_found(file_id) from None

    async def delete(self, account: str, file_id: str) -> None:
        """Remove the row and charge its last period in one transaction, then the blob."""
        if not FILE_ID.match(file_id):
            raise _not_found(file_id)
        now = int(self._clock())
        async with self._database.begin() as connection:
            statement = (
                delete(files)
                .where(files.c.id == file_id, files.c.account_id == account)
                .returning(files.c.bytes, files.c.storage_billed_until)
            )
            row = (await connection.execute(statement)).first()
            if row is None:
                raise _not_found(file_id)
            stored = StoredFile(file_id, account, row.bytes, row.storage_billed_until)
            await self._fees.charge_deleted(connection, stored, now)
        await self._blobs.delete(file_id)

    def reader(self, account: str) -> AccountFiles:
        return AccountFiles(self, account)

    async def read(self, account: str, file_id: str, max_bytes: int) -> bytes | None:
        """All of a file's bytes for the media stage; None when the account has no such file."""
        try:
            record = await self.get(account, file_id)
        except StepflashError:
            return None
        if record.bytes > max_bytes:
            raise MediaRejected(f"it is over the limit of {max_bytes} bytes")
        try:
            chunks = await self._blobs.open(file_id)
        except FileNotFoundError:  # deleted since the row was read
            return None
        return b"".join([chunk async for chunk in chunks])

    @staticmethod
    async def _find(connection: AsyncConnection, account: str, file_id: str) -> FileRecord | None:
        if not FILE_ID.match(file_id):
            return None
        query = select(files).where(files.c.id == file_id, files.c.account_id == account)
        row = (await connection.execute(query)).first()
        return None if row is None else FileRecord.of(row)


@dataclass(frozen=True, slots=True)
class AccountFiles:
    """One account's files as `stepfile://{file_id}` URLs read them (a `FileReader` of the
    media stage): the owner's files only."""

    service: FileService
    account: str

    async def read(self, file_id: str, max_bytes: int) -> bytes | None:
        return await self.service.read(self.account, file_id, max_bytes)

"""`/v1/files` through the official `openai` SDK against a live server with accounts: the
round trip, every limit, per-account isolation, and `stepfile://` images in a chat request
(answered by a scripted Step 3.7 upstream that records what it was sent).

Limits are small so the test stays fast: storage files up to 64 KiB, other purposes up to
10 MiB (above the 8 MiB body limit of other routes, which uploads must get past), 3 files per
account.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.accounts_db import AccountsDB
from tests.conftest import LiveServer, start_server, stop_server
from tests.media_files import image_bytes
from tests.upstreams import ScriptedUpstream

STORAGE_LIMIT = 64 * 1024
OTHER_LIMIT = 10 * 1024 * 1024
BODY_LIMIT = OTHER_LIMIT + 1024 * 1024  # the files route's body cap: largest file + margin
MAX_FILES = 3
MAX_IMAGE_BYTES = 32 * 1024  # below the storage limit, so a stored file can be too big to show
ACCOUNTS = ("ann", "ben", "cat", "dan")
PNG = image_bytes("PNG", 64, 48)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    server = ScriptedUpstream("sglang").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Keys made before the server starts, so it asks for them from its first request."""
    data_dir = tmp_path_factory.mktemp("files-data")
    db = AccountsDB(f"sqlite+aiosqlite:///{data_dir / 'stepflash.db'}")
    secrets = {}
    for account in ACCOUNTS:
        secrets[account] = db.create_key(account)
        db.topup(account, "5")
    return data_dir, secrets


@pytest.fixture(scope="module")
def server(
    session_tmp: Path, upstream: ScriptedUpstream, keys: tuple[Path, dict[str, str]]
) -> Iterator[LiveServer]:
    config = session_tmp / "files.toml"
    config.write_text(
        f'[[models]]\nname = "step-3.7-flash"\nbackend = "openai"\nreplicas = ["{upstream.url}"]\n'
    )
    env = {
        "STEPFLASH_DATA_DIR": str(keys[0]),
        "STEPFLASH_FILES__MAX_BYTES_STORAGE": str(STORAGE_LIMIT),
        "STEPFLASH_FILES__MAX_BYTES_OTHER": str(OTHER_LIMIT),
        "STEPFLASH_FILES__MAX_FILES_PER_ACCOUNT": str(MAX_FILES),
        "STEPFLASH_MEDIA__MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
    }
    live = start_server(session_tmp, None, env=env, config=config)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def clients(server: LiveServer, keys: tuple[Path, dict[str, str]]) -> dict[str, openai.OpenAI]:
    return {
        account: openai.OpenAI(base_url=server.api, api_key=secret, max_retries=0, timeout=30)
        for account, secret in keys[1].items()
    }


@pytest.fixture(autouse=True)
def empty_accounts(clients: dict[str, openai.OpenAI]) -> Iterator[None]:
    """Each test starts with no files, whatever the test before it left behind."""
    yield
    for client in clients.values():
        for file_id in listed(client):
            client.files.delete(file_id)


def listed(client: openai.OpenAI, **params: Any) -> list[str]:
    return [file.id for file in client.files.list(**params)]


def test_upload_list_retrieve_content_delete(clients: dict[str, openai.OpenAI]) -> None:
    ann = clients["ann"]
    notes = ann.files.create(file=("notes.md", b"# Notes\nhello\n"), purpose="retrieval-text")
    data = notes.model_dump(exclude_unset=True)
    assert data == {
        "id": notes.id,
        "object": "file",
        "bytes": 14,
        "created_at": data["created_at"],
        "filename": "notes.md",
        "purpose": "retrieval-text",
        "status": "processed",
    }
    assert notes.id.startswith("file-")
    assert isinstance(notes.created_at, int)
    picture = ann.files.create(file=("../pic.png", PNG), purpose="retrieval-image")
    assert picture.filename == "pic.png"

    assert listed(ann) == [picture.id, notes.id]  # newest first
    assert listed(ann, order="asc") == [notes.id, picture.id]
    assert listed(ann, limit=1) == [picture.id, notes.id]  # the SDK follows `after` cursors
    assert listed(ann, purpose="retrieval-image") == [picture.id]
    assert ann.files.retrieve(notes.id).model_dump(exclude_unset=True) == data
    content = ann.files.with_raw_response.content(picture.id)
    assert content.content == PNG
    assert content.headers["content-type"] == "image/png"
    assert ann.files.content(notes.id).content == b"# Notes\nhello\n"

    deleted = ann.files.delete(notes.id)
    assert deleted.model_dump() == {"id": notes.id, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        ann.files.retrieve(notes.id)
    with pytest.raises(openai.NotFoundError):
        ann.files.delete(notes.id)
    assert listed(ann) == [picture.id]


def test_purposes_and_types_are_checked(clients: dict[str, openai.OpenAI]) -> None:
    ann = clients["ann"]
    refusals: list[tuple[bytes, str, str, str]] = [
        (b"text", "fine-tune", "purpose", "purpose must be one of file-extract"),
        (b"", "storage", "file", "the file is empty"),
        (b"just text", "retrieval-image", "file", "takes a JPEG, PNG, WebP or GIF image"),
        (PNG[:100], "retrieval-image", "file", "this file is application/octet-stream"),
        (os.urandom(4096), "retrieval-text", "file", "takes UTF-8 text or a document"),
        (PNG, "file-extract", "file", "this file is image/png"),
    ]
    for data, purpose, param, says in refusals:
        with pytest.raises(openai.BadRequestError) as caught:
            ann.files.create(file=("x.bin", data), purpose=purpose)  # type: ignore[arg-type]
        assert caught.value.body["param"] == param  # type: ignore[index]
        assert says in caught.value.body["message"], caught.value.body  # type: ignore[index]
    pdf = ann.files.create(file=("paper.pdf", b"%PDF-1.7\n..."), purpose="file-extract")
    stored = ann.files.create(file=("blob", os.urandom(100)), purpose="storage")
    assert listed(ann) == [stored.id, pdf.id]


def test_missing_fields_are_400s(server: LiveServer, keys: tuple[Path, dict[str, str]]) -> None:
    headers = {"authorization": f"Bearer {keys[1]['ann']}"}
    url = f"{server.api}/files"
    no_purpose = httpx.post(url, files={"file": ("a.txt", b"hi")}, headers=headers)
    no_file = httpx.post(url, data={"purpose": "storage"}, headers=headers)
    as_json = httpx.post(url, json={"purpose": "storage"}, headers=headers)
    assert [r.status_code for r in (no_purpose, no_file, as_json)] == [400, 400, 400]
    assert no_purpose.json()["error"]["param"] == "purpose"
    assert no_file.json()["error"]["param"] == "file"


def test_size_limits_per_purpose_and_past_the_general_body_limit(
    clients: dict[str, openai.OpenAI],
) -> None:
    ann = clients["ann"]
    exact = ann.files.create(file=("full.bin", bytes(STORAGE_LIMIT)), purpose="storage")
    assert exact.bytes == STORAGE_LIMIT
    with pytest.raises(openai.APIStatusError) as caught:
        ann.files.create(file=("over.bin", bytes(STORAGE_LIMIT + 1)), purpose="storage")
    assert caught.value.status_code == 413
    assert f"allows at most {STORAGE_LIMIT} bytes" in caught.value.body["message"]  # type: ignore[index]

    big_text = b"a line of text\n" * (9 * 1024 * 1024 // 15)  # over the 8 MiB body limit
    big = ann.files.create(file=("big.txt", big_text), purpose="file-extract")
    assert ann.files.content(big.id).content == big_text
    with pytest.raises(openai.APIStatusError) as caught:
        ann.files.create(file=("huge.txt", big_text + big_text), purpose="file-extract")
    assert caught.value.status_code == 413
    assert f"limit of {BODY_LIMIT} bytes" in caught.value.body["message"]  # type: ignore[index]


def test_files_per_account_are_capped_even_in_a_burst(clients: dict[str, openai.OpenAI]) -> None:
    cat = clients["cat"]

    def upload(index: int) -> str | None:
        try:
            return cat.files.create(file=(f"{index}.txt", b"x"), purpose="storage").id
        except openai.BadRequestError as error:
            assert f"most files allowed ({MAX_FILES})" in error.body["message"]  # type: ignore[index]
            return None

    with ThreadPoolExecutor(8) as pool:
        stored = [file_id for file_id in pool.map(upload, range(8)) if file_id]
    assert len(stored) == MAX_FILES
    assert sorted(listed(cat)) == sorted(stored)
    assert upload(99) is None
    cat.files.delete(stored[0])
    assert upload(100) is not None


def test_another_accounts_file_is_a_404_like_a_missing_one(
    clients: dict[str, openai.OpenAI],
) -> None:
    ann, ben = clients["ann"], clients["ben"]
    secret = ann.files.create(file=("secret.txt", b"ann's secret"), purpose="storage")
    missing = "file-" + "0" * 24
    for file_id in (secret.id, missing):
        for call in (ben.files.retrieve, ben.files.content, ben.files.delete):
            with pytest.raises(openai.NotFoundError) as caught:
                call(file_id)
            assert caught.value.body == {  # identical but for the id itself
                "message": f"No such file: {file_id!r}",
                "type": "invalid_request_error",
                "param": "file_id",
                "code": "not_found",
            }
    assert secret.id not in listed(ben)
    assert ann.files.content(secret.id).content == b"ann's secret"


def ask_about(client: openai.OpenAI, url: str) -> Any:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]
    return client.chat.completions.with_raw_response.create(
        model="step-3.7-flash", messages=[{"role": "user", "content": content}]
    )


def test_stepfile_images_are_read_for_their_owner_only(
    clients: dict[str, openai.OpenAI], upstream: ScriptedUpstream
) -> None:
    dan, ben = clients["dan"], clients["ben"]
    picture = dan.files.create(file=("pic.png", PNG), purpose="retrieval-image")
    upstream.requests.clear()
    response = ask_about(dan, f"stepfile://{picture.id}")
    assert response.parse().choices[0].message.content
    sent = upstream.requests[-1]["messages"][0]["content"][0]["image_url"]["url"]
    assert sent == f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    assert int(response.headers["x-stepflash-image-tokens"]) > 0

    upstream.requests.clear()
    for who, url, says in [
        (ben, f"stepfile://{picture.id}", f"there is no file {picture.id!r}"),
        (dan, "stepfile://file-nope", "there is no file 'file-nope'"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            ask_about(who, url)
        assert caught.value.body["param"] == "messages[0].content[0]"  # type: ignore[index]
        assert says in caught.value.body["message"]  # type: ignore[index]
    # The stored bytes pass the checks any image passes: its type, then its size.
    text = dan.files.create(file=("a.txt", b"not an image"), purpose="storage")
    big = dan.files.create(file=("big.png", bytes(MAX_IMAGE_BYTES + 1)), purpose="storage")
    for file_id, code, says in [
        (text.id, "unsupported_content_type", "not a JPEG, PNG, WebP or static GIF"),
        (big.id, "request_params_invalid", f"over the limit of {MAX_IMAGE_BYTES} bytes"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            ask_about(dan, f"stepfile://{file_id}")
        assert caught.value.body["code"] == code  # type: ignore[index]
        assert says in caught.value.body["message"]  # type: ignore[index]
    assert not upstream.requests

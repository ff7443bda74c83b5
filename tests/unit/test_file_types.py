"""What an uploaded file is, decided from its bytes; and what its name becomes."""

from __future__ import annotations

import codecs
import io
import zipfile

import pytest

from stepflash.accounts.files import MAX_ZIP_ENTRIES, clean_filename, identify
from tests.media_files import image_bytes


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


OOXML = "application/vnd.openxmlformats-officedocument."
WORD, EXCEL = OOXML + "wordprocessingml.document", OOXML + "spreadsheetml.sheet"
POWERPOINT = OOXML + "presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"
OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
PNG = image_bytes("PNG", 64, 48)

CASES = [
    ("photo.png", PNG, "image", "image/png"),
    ("photo.jpg", image_bytes("JPEG", 64, 48), "image", "image/jpeg"),
    ("photo.webp", image_bytes("WEBP", 64, 48), "image", "image/webp"),
    ("photo.gif", image_bytes("GIF", 64, 48), "image", "image/gif"),
    ("cut.png", PNG[: len(PNG) // 2], "binary", "application/octet-stream"),
    ("paper.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "document", "application/pdf"),
    ("memo.rtf", b"{\\rtf1\\ansi Hello}", "document", "application/rtf"),
    ("old.doc", OLE2 + bytes(504), "document", "application/x-ole-storage"),
    ("a.docx", zipped({"word/document.xml": b"<w/>"}), "document", WORD),
    ("a.xlsx", zipped({"xl/workbook.xml": b"<x/>"}), "document", EXCEL),
    ("a.pptx", zipped({"ppt/presentation.xml": b"<p/>"}), "document", POWERPOINT),
    ("a.odt", zipped({"mimetype": ODT.encode()}), "document", ODT),
    ("a.epub", zipped({"mimetype": b"application/epub+zip"}), "document", "application/epub+zip"),
    ("a.zip", zipped({"notes.txt": b"hi"}), "binary", "application/octet-stream"),
    ("notes.md", "# Título\n\nnaïve café ✓\n".encode(), "text", "text/markdown"),
    ("notes", b"plain words\n", "text", "text/plain"),
    ("wide.txt", codecs.BOM_UTF16_LE + "hi".encode("utf-16-le"), "text", "text/plain"),
    ("latin1.txt", "café".encode("latin-1"), "binary", "application/octet-stream"),
    ("nul.txt", b"abc\x00def", "binary", "application/octet-stream"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "data", "family", "media_type"), CASES, ids=[c[0] for c in CASES])
def test_the_bytes_decide_the_type(name: str, data: bytes, family: str, media_type: str) -> None:
    source = io.BytesIO(data)
    assert identify(source, name) == (family, media_type)
    assert source.tell() == 0


def test_a_zip_listing_too_many_entries_is_not_opened() -> None:
    members = {str(index): b"" for index in range(MAX_ZIP_ENTRIES)}
    archive = zipped({**members, "word/document.xml": b"<w/>"})
    assert identify(io.BytesIO(archive), "many.docx") == ("binary", "application/octet-stream")


def test_text_split_across_chunks_is_still_text() -> None:
    text = ("é" * 700_000).encode()  # 1.4 MB: a chunk boundary falls inside a character
    assert identify(io.BytesIO(text), "long.txt") == ("text", "text/plain")


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\notes.txt", "notes.txt"),
        ("evil\r\nname.txt", "evilname.txt"),
        ("  spaced  ", "spaced"),
        ("", "upload"),
        (None, "upload"),
        ("dir/", "upload"),
        ("x" * 300 + ".docx", "x" * 250 + ".docx"),
        ("y" * 300, "y" * 255),
    ],
)
def test_filenames_are_cleaned_and_bounded(given: str | None, kept: str) -> None:
    assert clean_filename(given) == kept

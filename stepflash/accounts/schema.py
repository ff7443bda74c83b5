"""The tables. Balances and reports derive from the ledger, whose rows are never changed.

`accounts.balance` and `accounts.topup_total` are kept in the same transaction as the ledger
rows that move them, so reading a balance is one row, not a sum; `stepflash usage` and the
tests check that they equal the ledger's sums.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("id", String(64), primary_key=True),  # the account's name, e.g. "alice"
    Column("created_at", BigInteger, nullable=False),  # unix seconds
    Column("balance", BigInteger, nullable=False, default=0),  # micro-units
    Column("topup_total", BigInteger, nullable=False, default=0),  # micro-units, sets the tier
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),  # "key_…", safe to show and log
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(128), nullable=False, default=""),
    Column("prefix", String(16), nullable=False),  # the first characters, to recognise a key
    Column("secret_hash", String(64), nullable=False, unique=True),  # sha256 hex of the key
    Column("admin", Boolean, nullable=False, default=False),
    Column("created_by", String(40), nullable=True),  # the key that created it, if any
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # topup | usage | storage
    Column("reference", String(128), nullable=False),  # request id, top-up id, file-day
    Column("key_id", String(40), nullable=True),
    Column("model", String(128), nullable=True),
    Column("amount", BigInteger, nullable=False),  # micro-units; charges are negative
    Column("currency", String(3), nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("completion_tokens", BigInteger, nullable=False, default=0),
    Column("media_tokens", BigInteger, nullable=False, default=0),  # images and videos
    Column("web_searches", Integer, nullable=False, default=0),
    Column("created_at", BigInteger, nullable=False),  # unix seconds
    # One request settles once: a second settlement of the same reference is ignored.
    UniqueConstraint("kind", "reference", name="uq_ledger_kind_reference"),
    Index("ix_ledger_account_created", "account_id", "created_at"),
)

files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),  # "file-…"
    Column("account_id", String(64), ForeignKey("accounts.id"), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("media_type", String(128), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("storage_billed_until", BigInteger, nullable=False),  # unix seconds
)

"""Accounts, API keys, the ledger, pricing and files: everything that is money or belongs to
an account, on SQLAlchemy (SQLite by default, PostgreSQL by URL)."""

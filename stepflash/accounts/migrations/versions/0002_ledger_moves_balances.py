"""The database moves an account's balance and top-up total with every ledger row it inserts.

A trigger does it in the inserting statement, so a batch of charges is one statement (one round
trip to PostgreSQL, one step for SQLite) and no writer can insert a row without moving the
balance, or move it for a row that a duplicate key kept out.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SQLITE = """
CREATE TRIGGER ledger_moves_balance AFTER INSERT ON ledger FOR EACH ROW
BEGIN
    UPDATE accounts
    SET balance = balance + NEW.amount,
        topup_total = topup_total + CASE WHEN NEW.kind = 'topup' THEN NEW.amount ELSE 0 END
    WHERE id = NEW.account_id;
END
"""

_POSTGRES_FUNCTION = """
CREATE FUNCTION ledger_moves_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts
    SET balance = balance + NEW.amount,
        topup_total = topup_total + CASE WHEN NEW.kind = 'topup' THEN NEW.amount ELSE 0 END
    WHERE id = NEW.account_id;
    RETURN NULL;
END
$$
"""

_POSTGRES_TRIGGER = """
CREATE TRIGGER ledger_moves_balance AFTER INSERT ON ledger
FOR EACH ROW EXECUTE FUNCTION ledger_moves_balance()
"""


def upgrade() -> None:
    if _is_postgres():
        op.execute(_POSTGRES_FUNCTION)
        op.execute(_POSTGRES_TRIGGER)
    else:
        op.execute(_SQLITE)


def downgrade() -> None:
    if _is_postgres():
        op.execute("DROP TRIGGER ledger_moves_balance ON ledger")
        op.execute("DROP FUNCTION ledger_moves_balance()")
    else:
        op.execute("DROP TRIGGER ledger_moves_balance")


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"

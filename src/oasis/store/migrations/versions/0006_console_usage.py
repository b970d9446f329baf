"""The console's usage page: ``finish_reason`` on usage records (the request log shows it),
indexes for the log's filters in its keyset order (newest first by id, per key or model), and
``usage_daily``, the records summed per UTC day, key and model, for the chart, filled here from
the records already stored.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as table:
        table.add_column(sa.Column("finish_reason", sa.String(32), nullable=True))
    op.create_index("ix_usage_records_key_id_id", "usage_records", ["key_id", "id"])
    op.create_index("ix_usage_records_model_id", "usage_records", ["model", "id"])
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.BigInteger(), primary_key=True),
        sa.Column("key_id", sa.Integer(), primary_key=True),  # 0: the static --api-key
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("disconnected", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cached_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
    )
    op.execute(
        "INSERT INTO usage_daily (day, key_id, model, requests, errors, disconnected, "
        "prompt_tokens, cached_tokens, completion_tokens, cost_usd) "
        "SELECT (created_at / 86400) * 86400, COALESCE(key_id, 0), model, COUNT(*), "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN disconnected THEN 1 ELSE 0 END), "
        "SUM(prompt_tokens), SUM(cached_tokens), SUM(completion_tokens), SUM(cost_usd) "
        "FROM usage_records GROUP BY (created_at / 86400) * 86400, COALESCE(key_id, 0), model"
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_index("ix_usage_records_model_id", table_name="usage_records")
    op.drop_index("ix_usage_records_key_id_id", table_name="usage_records")
    with op.batch_alter_table("usage_records") as table:
        table.drop_column("finish_reason")

"""Placeholders rewritten to read the external parameter table (prism_plugin_clickhouse.
statements): recognised only outside literals, quoted identifiers and comments; INSERT ...
VALUES becomes one INSERT ... SELECT for any number of parameter rows."""

from __future__ import annotations

import pytest
from prism_plugin_clickhouse.statements import PARAMS_TABLE, rewrite

from prism.sdk import InvalidArgument


def test_rewrite_select_reads_each_parameter_as_a_scalar_subquery() -> None:
    done = rewrite("SELECT a FROM t WHERE a = $1 AND b IN ($2, $1)")
    scalar = f"(SELECT p{{}} FROM {PARAMS_TABLE})"
    assert done.sql == (
        f"SELECT a FROM t WHERE a = {scalar.format(1)} AND b IN "
        f"({scalar.format(2)}, {scalar.format(1)})"
    )
    assert (done.count, done.tuples) == (2, None)


def test_rewrite_leaves_literals_identifiers_and_comments_alone() -> None:
    sql = "SELECT '$1', 'it''s $2', 'a\\'$3', \"$4\", `$5` -- $6\n/* $7 */"
    done = rewrite(sql)
    assert done.sql == sql
    assert done.count == 0


def test_rewrite_insert_values_becomes_one_insert_select() -> None:
    done = rewrite("INSERT INTO t (a, b) VALUES ($1, lower($2)), ($3, 'x')")
    assert done.sql == (
        f"INSERT INTO t (a, b) SELECT p1, lower(p2) FROM {PARAMS_TABLE} "
        f"UNION ALL SELECT p3, 'x' FROM {PARAMS_TABLE}"
    )
    assert (done.count, done.tuples) == (3, 2)


def test_rewrite_insert_without_parameters_is_sent_as_written() -> None:
    done = rewrite("insert into t values (1), (2)")
    assert done.sql == "insert into t values (1), (2)"
    assert (done.count, done.tuples) == (0, 2)


def test_rewrite_insert_select_with_parameters_uses_subqueries() -> None:
    done = rewrite("INSERT INTO t SELECT * FROM u WHERE a = $1")
    assert done.tuples is None
    assert f"(SELECT p1 FROM {PARAMS_TABLE})" in done.sql


def test_rewrite_refuses_dollar_zero() -> None:
    with pytest.raises(InvalidArgument, match=r"\$1"):
        rewrite("SELECT $0")


def test_rewrite_format_values_is_not_a_values_clause() -> None:
    done = rewrite("INSERT INTO t FORMAT Values ($1)")
    assert done.tuples is None
    assert done.sql == f"INSERT INTO t FORMAT Values ((SELECT p1 FROM {PARAMS_TABLE}))"

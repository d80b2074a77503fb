"""DynamoDB's BatchExecuteStatement for the embedded local AWS (see ``moto_dynamodb_patches``).

:func:`dispatch.local.moto_dynamodb_patches.apply` calls :func:`install`, which
replaces moto 5.2.5's ``DynamoHandler.batch_execute_statement`` (the HTTP action)
with :func:`_batch_execute_statement`. Like every DynamoDB request it then runs
under ``moto_dynamodb_patches._requests_lock``, so a batch is atomic with respect
to every other request (not a transaction: its statements succeed or fail one by
one, as on DynamoDB).

What moto 5.2.5 gets wrong, and what is done about it:

1. **Answers.** moto runs each statement through py-partiql-parser over a copy of
   every table in the backend. An UPDATE whose WHERE condition is false (or whose
   item does not exist) updates nothing and reports success: the client cannot
   tell a lost compare-and-set from a won one. ``SET "n" = "n" + 1`` answers HTTP
   500. Neither the 25-statement limit nor the rule that a batch is all reads or
   all writes is enforced, two statements on one item are both applied, and
   ``ReturnValuesOnConditionCheckFailure`` is ignored.
2. **Cost.** Every statement converts every item of every table to JSON (twice
   per table with an index), so a 25-statement batch on a table of 100,000 items
   costs seconds.

Here a batch is parsed and run by this module, with AWS's documented answers
(API_BatchExecuteStatement, API_BatchStatementResponse, API_BatchStatementError,
"Running batch operations with PartiQL", "PartiQL update statements"), for the
statement shapes Dispatch sends::

    UPDATE "t" SET "a"=? SET "b"=?, "c"=? REMOVE "d" WHERE "pk"=? AND "n"=? AND "e" IS MISSING
    SELECT * FROM "t" WHERE "pk"=?            (or SELECT "a", "b" FROM ...)

* Identifiers are double-quoted (``""`` escapes a quote) or bare words; keywords
  are case-insensitive. Values are ``?`` parameters (bound in order of appearance
  from the statement's ``Parameters``), ``'string'`` literals (``''`` escapes a
  quote), number literals, and ``TRUE``/``FALSE``/``NULL``. ``SET``/``REMOVE``
  clauses come in any order, repeated or as comma lists, on top-level attributes.
* WHERE is a conjunction (AND) of ``name <op> value`` (``= <> < <= > >=``) and
  ``name IS [NOT] MISSING``. It must hold an equality on every key attribute.
  Numbers compare as decimals, strings by code point, binaries by bytes; an
  ordering comparison (``< <= > >=``) on a missing attribute, on another type, or
  on a type without an order is false. ``=`` compares values of any type; ``<>``
  is true when the attribute exists and is not equal (a value of another type is
  not equal); on a missing attribute both are false.
* Request-level ValidationException (HTTP 400): no statements, more than 25, or a
  batch mixing reads (SELECT) and writes (UPDATE/INSERT/DELETE).
* One response per statement, in order, each naming its table:

  - an UPDATE applied: ``{"TableName": t}``; an UPDATE never creates an item;
  - an UPDATE of a missing item or whose WHERE is false: Error
    ``ConditionalCheckFailed`` ("The conditional request failed"), with the old
    item under ``Error.Item`` when the statement asks ``ALL_OLD`` and it exists;
  - a SELECT: ``Item`` (projected when the statement names attributes) when the
    item exists and the WHERE holds, otherwise no ``Item``;
  - a statement addressing an item an earlier statement of the batch addressed:
    Error ``DuplicateItem``, not applied;
  - an unknown table: Error ``ResourceNotFound``;
  - anything else this module does not accept (INSERT, DELETE, ``RETURNING``,
    arithmetic, nested paths, a key in SET/REMOVE, a parameter count that does
    not match, a value moto refuses to store): Error ``ValidationError`` with a
    message saying what, never an HTTP 500.

``RETURNING ALL OLD *``/``ALL NEW *`` is refused inside a batch: we could not
confirm that AWS supports it in BatchExecuteStatement (it is documented for
ExecuteStatement), so the emulator does not pretend to, and Dispatch never sends it.

An UPDATE reads the item by its key from the table's dict, builds the new item's
attributes and stores them through moto's own ``Table.put_item`` (with
``overwrite=True``: the condition is already decided), which validates the values
the way moto's PutItem does and records the change on the table's stream if it has
one; moto derives its indexes from the items when it reads them. The cost per
statement is that of one item, whatever the table's size
(``python -m bench.partiql_emulator``). tests/integration/test_local_aws_partiql.py
checks all of this over HTTP.
"""

from __future__ import annotations

import base64
import functools
import importlib
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

MAX_STATEMENTS: Final = 25
"""Statements per BatchExecuteStatement request (AWS's limit)."""
PARSED_STATEMENTS: Final = 1_024
"""Statement texts whose parse is remembered (parameters are bound per request)."""

AttributeValue = dict[str, Any]

_CONDITION_FAILED: Final = "The conditional request failed"
_KEY_EQUALITY: Final = "Where clause does not contain a mandatory equality on all key attributes"
_READ_VERBS: Final = frozenset({"SELECT"})
_WRITE_VERBS: Final = frozenset({"UPDATE", "INSERT", "DELETE"})
_ORDERED_TYPES: Final = frozenset({"N", "S", "B"})
_ORDER: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

# moto modules, bound by install().
_responses: Any = None
_exceptions: Any = None
_rest_error: Any = None  # moto.core.exceptions.JsonRESTError: every DynamoDB error moto raises
_dynamo_type: Any = None


def install() -> None:
    """Replace moto's BatchExecuteStatement action (called by ``moto_dynamodb_patches``)."""
    global _responses, _exceptions, _rest_error, _dynamo_type  # noqa: PLW0603 - process-global
    _responses = importlib.import_module("moto.dynamodb.responses")
    _exceptions = importlib.import_module("moto.dynamodb.exceptions")
    _rest_error = importlib.import_module("moto.core.exceptions").JsonRESTError
    _dynamo_type = importlib.import_module("moto.dynamodb.models.dynamo_type")
    _responses.DynamoHandler.batch_execute_statement = _batch_execute_statement


# --- the HTTP action ---------------------------------------------------------------------------
def _batch_execute_statement(handler: Any) -> Any:
    statements = handler.body.get("Statements")
    try:
        _check_batch(statements)
    except _BatchRefused as exc:
        raise _exceptions.MockValidationException(str(exc)) from None
    responses = execute_batch(handler.dynamodb_backend, statements)
    return _responses.DynamoResult({"Responses": responses})


class _BatchRefused(Exception):
    """The whole request is refused (HTTP 400 ValidationException)."""


def _check_batch(statements: Any) -> None:
    if not isinstance(statements, list) or not statements:
        raise _BatchRefused(
            "1 validation error detected: Value at 'statements' failed to satisfy "
            "constraint: Member must have length greater than or equal to 1"
        )
    if len(statements) > MAX_STATEMENTS:
        raise _BatchRefused(
            "1 validation error detected: Value at 'statements' failed to satisfy "
            f"constraint: Member must have length less than or equal to {MAX_STATEMENTS}"
        )
    verbs = {_verb(s.get("Statement") if isinstance(s, dict) else None) for s in statements}
    if verbs & _READ_VERBS and verbs & _WRITE_VERBS:
        raise _BatchRefused(
            "The entire batch must consist of either read statements or write statements"
        )


def _verb(text: Any) -> str:
    if not isinstance(text, str):
        return ""
    words = text.split(None, 1)
    return words[0].upper() if words else ""


# --- running a batch ---------------------------------------------------------------------------
class _Failed(Exception):
    """One statement's error: its BatchStatementError."""

    def __init__(self, code: str, message: str, item: AttributeValue | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.item = item


def execute_batch(backend: Any, statements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Run ``statements`` (BatchStatementRequest dicts) in order on moto's ``backend``.

    Returns one BatchStatementResponse dict per statement. The caller holds the
    request lock and has checked the batch as a whole.
    """
    addressed: set[tuple[str, Any, Any]] = set()
    return [_execute(backend, request, addressed) for request in statements]


def _execute(
    backend: Any, request: Mapping[str, Any], addressed: set[tuple[str, Any, Any]]
) -> dict[str, Any]:
    try:
        statement = _parse(request.get("Statement"))
    except _Failed as exc:
        return _error(exc, table_name=None)
    try:
        return _run(backend, statement, request, addressed)
    except (ValueError, TypeError) as exc:  # a parameter that is no attribute value
        return _error(
            _Failed("ValidationError", f"Invalid value: {exc}"), table_name=statement.table
        )
    except _Failed as exc:
        return _error(exc, table_name=statement.table)


def _run(
    backend: Any,
    statement: _Statement,
    request: Mapping[str, Any],
    addressed: set[tuple[str, Any, Any]],
) -> dict[str, Any]:
    table = backend.tables.get(statement.table)
    if table is None:
        raise _Failed("ResourceNotFound", "Requested resource not found")
    values = _bind(statement, request.get("Parameters"))
    key = _item_key(table, statement, values)
    if isinstance(statement, _Update):
        _refuse_key_changes(table, statement)
    if key in addressed:
        raise _Failed("DuplicateItem", "Duplicate items in a batch are not allowed")
    addressed.add(key)
    if isinstance(statement, _Select):
        return _select(table, statement, values, key)
    _update(table, statement, values, key, request.get("ReturnValuesOnConditionCheckFailure"))
    return {"TableName": statement.table}


def _error(failed: _Failed, *, table_name: str | None) -> dict[str, Any]:
    error: dict[str, Any] = {"Code": failed.code, "Message": failed.message}
    if failed.item is not None:
        error["Item"] = failed.item
    response: dict[str, Any] = {"Error": error}
    if table_name is not None:
        response["TableName"] = table_name
    return response


def _bind(statement: _Statement, parameters: Any) -> list[AttributeValue]:
    given = parameters if isinstance(parameters, list) else []
    if len(given) != statement.parameters:
        raise _Failed(
            "ValidationError",
            f"Number of parameters in request and statement don't match: the statement "
            f"has {statement.parameters} '?', the request {len(given)} Parameters",
        )
    for value in given:
        if not isinstance(value, dict) or len(value) != 1:
            raise _Failed("ValidationError", f"A parameter is not an attribute value: {value!r}")
    return given


def _value(value: _Value, parameters: list[AttributeValue]) -> AttributeValue:
    return parameters[value] if isinstance(value, int) else dict(value)


def _item_key(table: Any, statement: _Statement, parameters: list[AttributeValue]) -> Any:
    """(table name, hash DynamoType, range DynamoType or None) from the WHERE's key equalities."""
    parts: list[Any] = []
    for name, expected_type in (
        (table.hash_key_attr, table.hash_key_type),
        (table.range_key_attr, table.range_key_type),
    ):
        if name is None:
            parts.append(None)
            continue
        equal = [p for p in statement.where if p.name == name and p.op == "="]
        if len(equal) != 1 or equal[0].value is None:
            raise _Failed("ValidationError", _KEY_EQUALITY)
        value = _value(equal[0].value, parameters)
        if next(iter(value)) != expected_type:
            raise _Failed(
                "ValidationError",
                f"One or more parameter values were invalid: Type mismatch for key {name}",
            )
        parts.append(_dynamo_type.DynamoType(value))
    return (table.name, parts[0], parts[1])


def _refuse_key_changes(table: Any, statement: _Update) -> None:
    for name in (*(name for name, _ in statement.sets), *statement.removes):
        if name in (table.hash_key_attr, table.range_key_attr):
            raise _Failed(
                "ValidationError",
                f"Cannot update attribute {name}. This attribute is part of the key",
            )


def _update(
    table: Any,
    statement: _Update,
    parameters: list[AttributeValue],
    key: tuple[str, Any, Any],
    return_on_failure: Any,
) -> None:
    current = table.get_item(key[1], key[2])
    if current is None:
        raise _Failed("ConditionalCheckFailed", _CONDITION_FAILED)
    old: dict[str, AttributeValue] = current.to_json()["Attributes"]
    if not _holds(statement.where, old, parameters):
        item = old if return_on_failure == "ALL_OLD" else None
        raise _Failed("ConditionalCheckFailed", _CONDITION_FAILED, item)
    new = dict(old)
    for name, value in statement.sets:
        new[name] = _value(value, parameters)
    for name in statement.removes:
        new.pop(name, None)
    try:
        table.put_item(new, overwrite=True)
    except _rest_error as exc:  # moto refuses the values (type, size)
        raise _Failed("ValidationError", str(getattr(exc, "message", exc))) from exc


def _select(
    table: Any, statement: _Select, parameters: list[AttributeValue], key: tuple[str, Any, Any]
) -> dict[str, Any]:
    response: dict[str, Any] = {"TableName": statement.table}
    current = table.get_item(key[1], key[2])
    if current is None:
        return response
    item: dict[str, AttributeValue] = current.to_json()["Attributes"]
    if not _holds(statement.where, item, parameters):
        return response
    if statement.projection is not None:
        item = {name: item[name] for name in statement.projection if name in item}
    response["Item"] = item
    return response


# --- conditions --------------------------------------------------------------------------------
def _holds(
    where: tuple[_Predicate, ...],
    item: Mapping[str, AttributeValue],
    parameters: list[AttributeValue],
) -> bool:
    return all(_predicate_holds(p, item, parameters) for p in where)


def _predicate_holds(
    predicate: _Predicate, item: Mapping[str, AttributeValue], parameters: list[AttributeValue]
) -> bool:
    present = item.get(predicate.name)
    if predicate.op == "MISSING":
        return present is None
    if predicate.op == "NOT MISSING":
        return present is not None
    if present is None or predicate.value is None:
        return False
    expected = _value(predicate.value, parameters)
    if predicate.op in ("=", "<>"):
        equal = _canonical(present) == _canonical(expected)
        return equal if predicate.op == "=" else not equal
    (present_type,) = present
    (expected_type,) = expected
    if present_type != expected_type or present_type not in _ORDERED_TYPES:
        return False
    return bool(_ORDER[predicate.op](_canonical(present)[1], _canonical(expected)[1]))


def _canonical(value: AttributeValue) -> tuple[str, Any]:
    """(type, a Python value that compares and hashes as DynamoDB compares the value)."""
    ((kind, inner),) = value.items()
    canonical: Any
    if kind == "N":
        canonical = _number(inner)
    elif kind == "B":
        canonical = _bytes(inner)
    elif kind == "SS":
        canonical = frozenset(inner)
    elif kind == "NS":
        canonical = frozenset(_number(v) for v in inner)
    elif kind == "BS":
        canonical = frozenset(_bytes(v) for v in inner)
    elif kind == "L":
        canonical = tuple(_canonical(v) for v in inner)
    elif kind == "M":
        canonical = frozenset((k, _canonical(v)) for k, v in inner.items())
    else:  # S, BOOL, NULL
        canonical = inner
    return (kind, canonical)


def _number(text: Any) -> Decimal:
    try:
        return Decimal(str(text))
    except InvalidOperation:
        raise _Failed("ValidationError", f"A value provided is not a number: {text!r}") from None


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return base64.b64decode(str(value), validate=True)  # binascii.Error is a ValueError


# --- parsing -----------------------------------------------------------------------------------
_Value = int | tuple[tuple[str, Any], ...]
"""A parameter's index, or a literal as the items of its attribute value."""


@dataclass(frozen=True, slots=True)
class _Predicate:
    name: str
    op: str  # = <> < <= > >= MISSING, NOT MISSING
    value: _Value | None


@dataclass(frozen=True, slots=True)
class _Update:
    table: str
    sets: tuple[tuple[str, _Value], ...]
    removes: tuple[str, ...]
    where: tuple[_Predicate, ...]
    parameters: int


@dataclass(frozen=True, slots=True)
class _Select:
    table: str
    projection: tuple[str, ...] | None  # None: *
    where: tuple[_Predicate, ...]
    parameters: int


_Statement = _Update | _Select

_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<quoted>"(?:[^"]|"")*")
      | (?P<string>'(?:[^']|'')*')
      | (?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<symbol><>|!=|<=|>=|=|<|>|\?|,|\*|\.|\[|\]|\+|-|\(|\))
    )""",
    re.VERBOSE,
)
_COMPARISONS: Final = frozenset({"=", "<>", "!=", "<", "<=", ">", ">="})
_CLAUSE_WORDS: Final = frozenset({"SET", "REMOVE", "WHERE", "RETURNING"})


class _Syntax(Exception):
    """The statement is outside the grammar this module accepts."""


def _parse(text: Any) -> _Statement:
    if not isinstance(text, str):
        raise _Failed("ValidationError", "Statement must be a string")
    try:
        return _parse_text(text)
    except _Syntax as exc:
        raise _Failed(
            "ValidationError", f"Statement not supported by the local AWS: {exc}"
        ) from None


@functools.lru_cache(maxsize=PARSED_STATEMENTS)
def _parse_text(text: str) -> _Statement:
    return _Parser(_tokens(text)).statement()


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    end = len(text.rstrip())
    while position < end:
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise _Syntax(
                f"unexpected text at offset {position}: {text[position : position + 20]!r}"
            )
        kind = match.lastgroup or ""
        lexeme = match.group(kind)
        if kind == "quoted":
            lexeme = lexeme[1:-1].replace('""', '"')
        elif kind == "string":
            lexeme = lexeme[1:-1].replace("''", "'")
        tokens.append((kind, lexeme))
        position = match.end()
    return tokens


class _Parser:
    """A recursive-descent parser over the tokens of one statement (grammar: module docstring)."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self._tokens = tokens
        self._position = 0
        self._parameters = 0

    def statement(self) -> _Statement:
        verb = self._word()
        if verb == "UPDATE":
            return self._update()
        if verb == "SELECT":
            return self._select()
        raise _Syntax(f"{verb or 'an empty statement'} (only UPDATE and SELECT are)")

    def _update(self) -> _Update:
        table = self._identifier("a table name")
        sets: list[tuple[str, _Value]] = []
        removes: list[str] = []
        while (clause := self._word()) in ("SET", "REMOVE"):
            while True:
                name = self._identifier("an attribute name")
                if clause == "SET":
                    self._expect("=")
                    sets.append((name, self._value()))
                else:
                    removes.append(name)
                if not self._accept(","):
                    break
        if not sets and not removes:
            raise _Syntax("UPDATE needs at least one SET or REMOVE")
        names = [name for name, _ in sets] + removes
        if len(set(names)) != len(names):
            raise _Syntax("an attribute is set or removed more than once")
        if clause != "WHERE":
            raise _Syntax(f"expected SET, REMOVE or WHERE, found {clause or 'the end'}")
        where = self._where()
        return _Update(table, tuple(sets), tuple(removes), where, self._parameters)

    def _select(self) -> _Select:
        projection: tuple[str, ...] | None = None
        if not self._accept("*"):
            names = [self._identifier("an attribute name or *")]
            while self._accept(","):
                names.append(self._identifier("an attribute name"))
            projection = tuple(names)
        if self._word() != "FROM":
            raise _Syntax("expected FROM")
        table = self._identifier("a table name")
        if self._word() != "WHERE":
            raise _Syntax("a SELECT in a batch needs WHERE with the item's key")
        where = self._where()
        return _Select(table, projection, where, self._parameters)

    def _where(self) -> tuple[_Predicate, ...]:
        predicates = [self._predicate()]
        while True:
            word = self._word()
            if word == "AND":
                predicates.append(self._predicate())
            elif word == "":
                return tuple(predicates)
            elif word == "RETURNING":
                raise _Syntax("RETURNING is not supported in BatchExecuteStatement")
            else:
                raise _Syntax(f"expected AND or the end of the statement, found {word}")

    def _predicate(self) -> _Predicate:
        name = self._identifier("an attribute name")
        kind, lexeme = self._next()
        if kind == "word" and lexeme.upper() == "IS":
            negated = self._peek_word() == "NOT"
            if negated:
                self._position += 1
            if self._word() != "MISSING":
                raise _Syntax("only IS MISSING and IS NOT MISSING are supported")
            return _Predicate(name, "NOT MISSING" if negated else "MISSING", None)
        if kind != "symbol" or lexeme not in _COMPARISONS:
            raise _Syntax(f"expected a comparison after {name!r}, found {lexeme!r}")
        return _Predicate(name, "<>" if lexeme == "!=" else lexeme, self._value())

    def _value(self) -> _Value:
        kind, lexeme = self._next()
        if kind == "symbol" and lexeme == "?":
            self._parameters += 1
            return self._parameters - 1
        if kind == "string":
            return (("S", lexeme),)
        if kind == "number":
            _number(lexeme)
            return (("N", lexeme.lstrip("+")),)
        if kind == "word" and lexeme.upper() in ("TRUE", "FALSE"):
            return (("BOOL", lexeme.upper() == "TRUE"),)
        if kind == "word" and lexeme.upper() == "NULL":
            return (("NULL", True),)
        raise _Syntax(
            f"expected a value (?, 'string' or a number), found {lexeme or 'the end'!r} "
            "(paths and arithmetic are not supported)"
        )

    # tokens
    def _next(self) -> tuple[str, str]:
        if self._position >= len(self._tokens):
            return ("end", "")
        at = self._tokens[self._position]
        self._position += 1
        return at

    def _peek_word(self) -> str:
        if self._position < len(self._tokens) and self._tokens[self._position][0] == "word":
            return self._tokens[self._position][1].upper()
        return ""

    def _word(self) -> str:
        """The next keyword, upper-cased ('' at the end); anything else is an error."""
        kind, lexeme = self._next()
        if kind == "end":
            return ""
        if kind != "word":
            raise _Syntax(f"expected a keyword, found {lexeme!r}")
        return lexeme.upper()

    def _identifier(self, what: str) -> str:
        kind, lexeme = self._next()
        if kind == "quoted" or (kind == "word" and lexeme.upper() not in _CLAUSE_WORDS):
            if self._position < len(self._tokens) and self._tokens[self._position][1] in (".", "["):
                raise _Syntax("nested paths are not supported")
            return lexeme
        raise _Syntax(f"expected {what}, found {lexeme or 'the end'!r}")

    def _expect(self, symbol: str) -> None:
        if not self._accept(symbol):
            found = self._tokens[self._position][1] if self._position < len(self._tokens) else ""
            raise _Syntax(f"expected {symbol!r}, found {found or 'the end'!r}")

    def _accept(self, symbol: str) -> bool:
        at = self._tokens[self._position] if self._position < len(self._tokens) else None
        if at == ("symbol", symbol):
            self._position += 1
            return True
        return False

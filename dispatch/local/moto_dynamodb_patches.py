"""Corrections to moto's DynamoDB backend, pinned to moto 5.2.5 (applied by ``moto_patches``).

:func:`dispatch.local.moto_patches.apply` calls :func:`apply` after patching SQS;
like it, :func:`apply` refuses any moto other than 5.2.5, because every patch
below replaces a moto function with an edited copy or an equivalent rewrite of it.

What moto 5.2.5 gets wrong, and what is done about it:

1. **Cost.** One UpdateItem parses its UpdateExpression twice and its
   ConditionExpression twice, deep-copies the parsed tree once per validation
   (twice when the item is new), then walks it with ten validators, each a
   generic depth-first traversal that rebuilds its processing table and runs
   ``isinstance`` against abstract base classes at every node; two of them run
   ``find_clauses`` again at every clause node. About 10 ms of CPU for
   Dispatch's claim, the emulator's bottleneck. Here:

   * **UpdateExpression trees are parsed once per expression text.** The parse
     is a pure function of the text (tokenizer and parser read nothing else), and
     only a successful parse is remembered, so an invalid expression raises
     moto's own error every time. ``UpdateExpressionParser.make`` hands out a
     *fresh copy* of the remembered tree, so no two requests ever share a node.
   * **Trees are copied by a structural copy** instead of ``copy.deepcopy`` (in
     ``make`` and in ``Validator.__init__``). It is the same copy (every node a
     new object of the same class with the same attributes, a new list of
     children in order, each child's ``parent`` the copy of its parent) and it
     refuses anything it cannot copy exactly that way (a node reached twice, a
     ``parent`` that is not the node holding it, a leaf that is not a
     ``str``/``int``/``bool``/``None``, a root with a parent): then
     ``copy.deepcopy`` runs, as in moto. A remembered tree is checked once, when
     it is parsed, and copied without the checks afterwards (it never changes:
     nothing outside this module ever sees it).
   * **The three structural validators are remembered.** ``ActionCountValidator``
     (at most one SET/ADD/REMOVE clause), ``OverlappingPathsValidator`` and
     ``UpdateHashRangeKeyValidator`` read only the tree (the expression text),
     the ExpressionAttributeNames map and the table's key attributes; none of them
     changes the tree (each returns the node it was given). Once they have passed
     for one (expression, names map, key attributes), they are skipped for the
     same triple. They are never skipped on a first sight, nor after they raised.
     The seven other validators (values, paths resolved against the item,
     if_not_exists/list_append, missing paths, ``+``/``-``, key types, empty
     keys) run on every request, in moto's order.
   * **Traversals dispatch on the node's class.** ``DepthFirstTraverser`` is
     rewritten to read its processing table once per traverser and to cache, per
     node class, which processor applies (the first match in table order, as
     moto's ``process``); ``Node.find_clauses`` caches per class whether to
     descend. The visit order, the ``pre_processing_of_child`` calls and the
     replacement of processed nodes in their parent are moto's. A class-based
     answer is the ``isinstance`` answer because no node class is registered as a
     virtual subclass and none defines ``__subclasshook__``.
   * **ConditionExpressions are parsed once per expression text.** moto's parser
     looks up placeholders while it parses; the remembered tree is moto's tree
     with those lookups redone for each request (``#name`` from the request's
     names, ``:value`` from its values) before moto turns it into the condition
     it evaluates. A request that lacks a placeholder the expression uses, or
     whose maps are not dicts, goes through moto's parser and gets moto's error.

   Caches are bounded (their contents are forgotten beyond :data:`CACHE_ENTRIES`
   entries and rebuilt as needed) and hold only parse results: templates that
   are copied or rebuilt, never handed out.

2. **Races.** Nothing in moto's DynamoDB backend is locked. UpdateItem reads the
   item, checks the condition, computes the new values and writes them back in
   separate steps (and the HTTP handler reads the old item for ReturnValues
   before all of that); two concurrent updates of one item can both pass a
   condition or lose an increment, and a scan can meet a table changing under
   it. Measured on stock moto: 32 threads incrementing one item 1,920 times lost
   4 to 6 increments; 12 deliveries of one task claiming it at once (Dispatch's
   claim) let two of them win. On DynamoDB each request on an item is atomic.
   Here every DynamoDB request, from parsing it to serialising the answer, runs
   under one lock (around ``DynamoHandler.call_action``): the requests' CPU work
   was already serialised by the GIL, so nothing is slower, and no DynamoDB
   request waits for another (the one way one could, a table stream feeding a
   Lambda function that writes back to DynamoDB, needs Docker, and Dispatch's
   tables have no stream).

3. **Answers.** moto serialises every DynamoDB answer by walking the output shape
   generically: for each attribute value of each item it looks up all ten members
   of ``AttributeValue`` (``S``, ``N``, ``B``, ...), each under two spellings, through
   alias providers. For the claim's ``ALL_NEW`` answer that was about a third of
   the request. Here an attribute value that is plainly one of ``S``/``N`` (a str),
   ``BOOL``/``NULL`` (a bool), ``SS``/``NS`` (a list of str), or ``M``/``L`` of
   such values, is written out directly: exactly what moto's walk writes for it
   (the same keys and values; nothing is dropped because nothing is ``None``).
   Anything else (binary values, several members, other types) goes through moto's
   walk unchanged, and only DynamoDB answers are touched (the check is on the
   serializer's service).

4. **BatchExecuteStatement** (PartiQL) is replaced whole, with AWS's answers for
   the statements Dispatch sends: see :mod:`dispatch.local.partiql`.

5. **Queries on an index sort the whole table first.** ``Table.query`` with an
   ``IndexName`` walks ``Table.all_items()``, which sorts every item of the table by
   its key (Python comparisons of ``DynamoType``), keeps those of the index's
   partition, and then sorts those again by the index's full key (index keys, then
   the table's). The first sort cannot change the answer: the second orders the
   matches completely (every key includes the table's hash key, unique per item).
   It was most of the cost of a listing page (``dispatch tasks``) on a large table:
   about 2 s a Query at 100,000 items. Here, while a Query on an index runs,
   ``all_items()`` returns the items unsorted (a thread-local flag set around the
   call); every other caller (Scan, a Query on the table) still gets them sorted.
   tests/integration/test_local_aws_index_queries.py compares the answers with stock
   moto's, page by page.

Apart from BatchExecuteStatement, observable DynamoDB behaviour is moto's: the same
results, the same errors with the same messages, from the same checks in the same
order, except that concurrent requests no longer interleave.
tests/integration/test_local_aws_dynamodb.py checks that over HTTP, case by case and
side by side with a stock moto emulator.

Effect (``bench/emulator_dynamodb.py``: emulator CPU per UpdateItem, HTTP included,
medians of three runs): Dispatch's claim of a queued task 8 -> 3.4 ms (2.1 to 2.4x),
of a task without a record 11 -> 4 ms (2.7 to 2.9x), its success update 1.6 to 1.9x
and the throttle's leases 1.5 to 1.9x cheaper. For the claim, moto's UpdateItem
handler (parsing, validation, update) is about 3x cheaper and its validation 4.5x.
What remains of a request, about 2 ms, is mostly moto's generic HTTP handling,
request set-up, response serialisation and garbage collection. Writing plain
answers directly (3.) then took the claim's answer from about a third of moto's
work for it to a tenth (profiled in one process), and the claim from 3.3 to
3.0 ms of emulator CPU in the efficiency benchmark's calibration.
"""

from __future__ import annotations

import copy
import importlib
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, NamedTuple

from dispatch.local import partiql

MOTO_VERSION: Final = "5.2.5"
CACHE_ENTRIES: Final = 1_024
"""Expressions (and validated triples) remembered per cache before the cache starts over."""

_apply_lock = threading.Lock()
_applied = False
# moto.dynamodb modules, bound by apply() after the version check.
_ast: Any = None
_parser_cls: Any = None
_condition_parser_cls: Any = None
# The three validators that read only the tree, the names map and the key attributes.
_STRUCTURAL: tuple[type[Any], ...] = ()
# One lock for every DynamoDB request in the process (see 2. in the module docstring).
_requests_lock = threading.RLock()


def apply() -> None:
    """Patch moto's DynamoDB backend in this process (idempotent).

    Raises RuntimeError naming both versions if moto is not 5.2.5, or if moto
    is not installed.
    """
    global _applied  # noqa: PLW0603 - patching a library is process-global by nature
    try:
        import moto
    except ImportError as exc:
        raise RuntimeError(
            f"dispatch.local.moto_dynamodb_patches needs moto {MOTO_VERSION} "
            "(install dispatch-aws[local])"
        ) from exc
    installed = getattr(moto, "__version__", "unknown")
    if installed != MOTO_VERSION:
        raise RuntimeError(
            f"dispatch.local.moto_dynamodb_patches is written for moto {MOTO_VERSION} but moto "
            f"{installed} is installed; install moto=={MOTO_VERSION} (the version "
            "dispatch-aws[local] pins) or port the patches to the new version"
        )
    with _apply_lock:
        if _applied:
            return
        _install()
        _applied = True


def is_applied() -> bool:
    """True once :func:`apply` has patched this process."""
    return _applied


class _Memo:
    """A bounded, thread-safe map: past ``CACHE_ENTRIES`` entries it starts over.

    Starting over (rather than evicting one by one) keeps every operation O(1);
    a forgotten entry only costs one recomputation.
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if len(self._entries) >= CACHE_ENTRIES:
                self._entries.clear()
            self._entries[key] = value


_update_trees = _Memo()  # UpdateExpression text -> _Template (never handed out, only copies)
_validated = _Memo()  # (text, names, key attributes) -> True once the structural checks passed
_conditions = _Memo()  # ConditionExpression text -> _ConditionTemplate


# --- install ---------------------------------------------------------------------------------
def _install() -> None:
    global _ast, _parser_cls, _condition_parser_cls, _STRUCTURAL  # noqa: PLW0603 - see apply()
    # Bound as Any: the patches replace moto's methods, which its annotations forbid.
    comparisons: Any = importlib.import_module("moto.dynamodb.comparisons")
    responses: Any = importlib.import_module("moto.dynamodb.responses")
    ast_nodes: Any = importlib.import_module("moto.dynamodb.parsing.ast_nodes")
    expressions: Any = importlib.import_module("moto.dynamodb.parsing.expressions")
    validators: Any = importlib.import_module("moto.dynamodb.parsing.validators")

    _ast = ast_nodes
    _parser_cls = expressions.UpdateExpressionParser
    _condition_parser_cls = comparisons.ConditionExpressionParser
    _STRUCTURAL = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    _Traversal(ast_nodes).install(ast_nodes)

    original_make = expressions.UpdateExpressionParser.make.__func__

    def make(cls: Any, expression_str: str) -> Any:
        if cls is not _parser_cls or not isinstance(expression_str, str):
            return original_make(cls, expression_str)
        template: _Template | None = _update_trees.get(expression_str)
        if template is None:
            tree = original_make(cls, expression_str)  # raises moto's error if invalid
            template = _Template(tree, plain=_is_plain(tree))
            _update_trees.put(expression_str, template)
        if template.plain:
            tree = _copy_verified(template.tree, None)
        else:
            tree = copy.deepcopy(template.tree)
        tree._dispatch_source = expression_str  # for the validator's memo (see _validate)
        return tree

    expressions.UpdateExpressionParser.make = classmethod(make)
    validators.Validator.__init__ = _validator_init
    validators.UpdateExpressionValidator.validate = _validate

    original_parse = comparisons.ConditionExpressionParser.parse

    def parse(self: Any) -> Any:
        if not self.condition_expression or type(self) is not _condition_parser_cls:
            return original_parse(self)
        return _parse_condition(self, original_parse)

    comparisons.ConditionExpressionParser.parse = parse

    original_call_action = responses.DynamoHandler.call_action

    def call_action(self: Any) -> Any:
        with _requests_lock:
            return original_call_action(self)

    responses.DynamoHandler.call_action = call_action

    serialize: Any = importlib.import_module("moto.core.serialize")
    serializer_cls = serialize.get_serializer_class("dynamodb", "json")
    original_structure = serializer_cls._serialize_type_structure

    def serialize_structure(self: Any, serialized: Any, value: Any, shape: Any, key: str) -> None:
        if (
            key
            and shape.name == "AttributeValue"
            and self.service_model.service_name == "dynamodb"
            and not getattr(self._value_picker, "response_transformers", None)
        ):
            plain = plain_attribute_value(value)
            if plain is not None:
                self._default_serialize(serialized, plain, shape, key)
                return
        original_structure(self, serialized, value, shape, key)

    serializer_cls._serialize_type_structure = serialize_structure

    _install_index_queries(importlib.import_module("moto.dynamodb.models.table"))
    partiql.install()


_index_query = threading.local()  # .active while a Query on an index runs in this thread
_QUERY_INDEX_ARG: Final = 7  # Table.query(hash_key, ..., projection_expressions, index_name, ...)


def _install_index_queries(table_module: Any) -> None:
    """5. in the module docstring: no whole-table sort under a Query on an index."""
    table_cls = table_module.Table
    original_query = table_cls.query
    original_all_items = table_cls.all_items

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        # moto's backend passes index_name as the 8th positional argument.
        index_name = args[_QUERY_INDEX_ARG] if len(args) > _QUERY_INDEX_ARG else None
        if not kwargs.get("index_name", index_name):
            return original_query(self, *args, **kwargs)
        _index_query.active = True
        try:
            return original_query(self, *args, **kwargs)
        finally:
            _index_query.active = False

    def all_items(self: Any) -> list[Any]:
        if not getattr(_index_query, "active", False):
            return list(original_all_items(self))
        if self.range_key_attr:
            return [item for by_range in self.items.values() for item in by_range.values()]
        return list(self.items.values())

    table_cls.query = query
    table_cls.all_items = all_items


# --- answers ---------------------------------------------------------------------------------
_SCALARS: Final = {"S": str, "N": str, "BOOL": bool, "NULL": bool}
_STRING_SETS: Final = frozenset({"SS", "NS"})


def plain_attribute_value(value: Any) -> dict[str, Any] | None:
    """A new copy of ``value`` as moto's serializer would write it, or None when it is not
    a plain attribute value (see 3. in the module docstring) and moto's walk must run."""
    if type(value) is not dict or len(value) != 1:
        return None
    ((member, inner),) = value.items()
    scalar = _SCALARS.get(member)
    copied: Any = None
    if scalar is not None:
        copied = inner if type(inner) is scalar else None
    elif member in _STRING_SETS:
        if type(inner) is list and all(type(item) is str for item in inner):
            copied = list(inner)
    elif member == "M" and type(inner) is dict:
        mapped = {name: plain_attribute_value(item) for name, item in inner.items()}
        if all(type(name) is str and item is not None for name, item in mapped.items()):
            copied = mapped
    elif member == "L" and type(inner) is list:
        listed = [plain_attribute_value(item) for item in inner]
        if all(item is not None for item in listed):
            copied = listed
    return None if copied is None else {member: copied}


# --- structural copy -------------------------------------------------------------------------
_LEAVES: Final[frozenset[type[Any]]] = frozenset({str, int, bool, type(None)})
_NODE_ATTRIBUTES: Final = frozenset({"type", "children", "parent", "_dispatch_source"})


class _NotPlain(Exception):
    """The tree has a shape the structural copy does not reproduce exactly."""


class _Template(NamedTuple):
    """A parsed UpdateExpression tree, kept only to be copied."""

    tree: Any
    plain: bool  # True: the structural copy reproduces it exactly (checked once)


def _is_plain(tree: Any) -> bool:
    try:
        if tree.parent is not None:
            return False
        _copy_node(tree, None)
    except (_NotPlain, AttributeError):
        return False
    return True


def _copy_verified(node: Any, parent: Any) -> Any:
    """The structural copy without its checks, for a template that passed them.

    A template is never handed out and so never changes after the check.
    """
    new = object.__new__(type(node))
    new.__dict__.update(node.__dict__)
    new.parent = parent
    children = node.children
    if children is not None:
        new.children = [
            child if type(child) in _LEAVES else _copy_verified(child, new) for child in children
        ]
    return new


def copy_tree(root: Any) -> Any:
    """``copy.deepcopy(root)`` for a parsed UpdateExpression tree, faster.

    Falls back to ``copy.deepcopy`` for any tree it could not copy exactly.
    """
    if type(root) in _LEAVES:
        return root
    try:
        if root.parent is not None:
            raise _NotPlain
        return _copy_node(root, None)
    except (_NotPlain, AttributeError):
        return copy.deepcopy(root)


def _copy_node(node: Any, parent: Any) -> Any:
    cls = type(node)
    is_node = _node_classes.get(cls)
    if is_node is None:
        is_node = _node_classes[cls] = issubclass(cls, _ast.Node)
    if not is_node:
        raise _NotPlain
    attributes = node.__dict__
    for name, value in attributes.items():
        if name not in _NODE_ATTRIBUTES:
            raise _NotPlain
        if name not in ("children", "parent") and type(value) not in _LEAVES:
            raise _NotPlain
    new = object.__new__(cls)
    new.__dict__.update(attributes)
    new.parent = parent
    children = attributes.get("children")
    if children is not None:
        if type(children) is not list:
            raise _NotPlain
        copied = []
        for child in children:
            if type(child) in _LEAVES:
                copied.append(child)
            elif child.parent is node:
                copied.append(_copy_node(child, new))
            else:
                raise _NotPlain  # shared, or a parent pointer elsewhere: let deepcopy decide
        new.children = copied
    return new


_node_classes: dict[type[Any], bool] = {}


# --- validation --------------------------------------------------------------------------------
def _validator_init(  # noqa: PLR0917 - moto's positional signature
    self: Any,
    expression: Any,
    expression_attribute_names: dict[str, str],
    expression_attribute_values: dict[str, dict[str, Any]],
    item: Any,
    table: Any,
) -> None:
    # moto's Validator.__init__, with the structural copy for deepcopy (the
    # validators rewrite their own copy; the tree they were given stays as it was).
    self.expression_attribute_names = expression_attribute_names
    self.expression_attribute_values = expression_attribute_values
    self.item = item
    self.table = table
    self.processors = self.get_ast_processors()
    self.node_to_validate = copy_tree(expression)
    self._dispatch_source = getattr(expression, "_dispatch_source", None)


def _validate(self: Any) -> Any:
    # moto's Validator.validate, skipping the structural validators for a triple
    # (expression text, names map, key attributes) they have already passed.
    key = _validation_key(self)
    passed = key is not None and _validated.get(key) is not None
    last_structural = max(
        (i for i, p in enumerate(self.processors) if type(p) in _STRUCTURAL), default=-1
    )
    node = self.node_to_validate
    for i, processor in enumerate(self.processors):
        if not (passed and type(processor) in _STRUCTURAL):
            node = processor.traverse(node)
        if i == last_structural and key is not None and not passed:
            _validated.put(key, True)
    return node


def _validation_key(validator: Any) -> Hashable | None:
    source = validator._dispatch_source
    if source is None:
        return None
    names = validator.expression_attribute_names
    try:
        names_key = None if names is None else frozenset(names.items())
        key_attributes = tuple(validator.table.table_key_attrs)
        key = (source, names_key, key_attributes)
        hash(key)
    except (AttributeError, TypeError):
        return None  # an unhashable map: validate in full, as moto does
    return key


# --- traversal ---------------------------------------------------------------------------------
_NOT_A_NODE: Final = -2  # in a dispatch table: the class is not a Node (returned as it is)
_NO_PROCESSOR: Final = -1  # a Node no processor of this traverser applies to


class _Walk(NamedTuple):
    """One traverser's processors (read once) and the shared per-class choices."""

    processors: tuple[Callable[[Any], Any], ...]  # in the order of its _processing_map
    classes: tuple[type[Any], ...]  # the map's classes, in the same order
    chosen: dict[type[Any], int]  # node class -> index in processors, or a marker above
    before_child: Callable[[Any, int], None] | None  # None: the stock no-op hook


class _Traversal:
    """Faster, equivalent ``DepthFirstTraverser.traverse_node_recursively``, ``Node.find_clauses``.

    A traverser's choice for a node is moto's ``process``: the first class of its
    ``_processing_map`` (in order) the node is an instance of. It depends only on
    the node's class and on the map's classes, so it is computed once per
    (traverser class, map classes, node class) and shared by every traverser.
    """

    def __init__(self, ast_nodes: Any) -> None:
        traverser = ast_nodes.DepthFirstTraverser
        self._node = ast_nodes.Node
        self._descend_into = (ast_nodes.Expression, ast_nodes.UpdateExpressionFunction)
        self._original = traverser.traverse_node_recursively
        self._stock_process = traverser.process
        self._stock_nodes_to_be_processed = traverser.nodes_to_be_processed
        self._stock_before_child = traverser.pre_processing_of_child
        self._tables: dict[tuple[Any, ...], dict[type[Any], int]] = {}
        self._descends: dict[type[Any], bool] = {}

    def install(self, ast_nodes: Any) -> None:
        traversal = self

        def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
            state = traversal.walk_for(self)
            if state is None:
                return traversal._original(self, node, child_id)
            return traversal.walk(state, node, child_id)

        def find_clauses(self: Any, clause_types: Any) -> list[Any]:
            return traversal.find_clauses(self, clause_types)

        ast_nodes.DepthFirstTraverser.traverse_node_recursively = traverse_node_recursively
        ast_nodes.Node.find_clauses = find_clauses

    def walk_for(self, traverser: Any) -> _Walk | None:
        """The traverser's walk state (made on its first traversal), or None for moto's walk."""
        state: _Walk | None = traverser.__dict__.get("_dispatch_walk")
        if state is None:
            cls = type(traverser)
            if (
                cls.process is not self._stock_process
                or cls.nodes_to_be_processed is not self._stock_nodes_to_be_processed
            ):
                return None  # a traverser that chooses its processor otherwise
            processing = tuple(traverser._processing_map().items())
            classes = tuple(klass for klass, _ in processing)
            chosen = self._tables.setdefault((cls, *classes), {})
            before = (
                None
                if cls.pre_processing_of_child is self._stock_before_child
                else traverser.pre_processing_of_child
            )
            state = _Walk(tuple(fn for _, fn in processing), classes, chosen, before)
            traverser._dispatch_walk = state
        return state

    def walk(self, state: _Walk, node: Any, child_id: int) -> Any:
        """moto's traverse_node_recursively: children first (left to right, each announced
        to pre_processing_of_child), then the node if a processor applies; the
        result takes the node's place in its parent."""
        cls = type(node)
        index = state.chosen.get(cls)
        if index is None:
            index = self._choose(state, cls)
        if index == _NOT_A_NODE:
            return node
        parent_node = node.parent
        children = node.children
        if children is not None:
            before = state.before_child
            for i, child in enumerate(children):
                if before is not None:
                    before(node, i)
                self.walk(state, child, i)
        if index >= 0:
            node = state.processors[index](node)
            node.parent = parent_node
            if parent_node:
                parent_node.children[child_id] = node
        return node

    def _choose(self, state: _Walk, cls: type[Any]) -> int:
        if not issubclass(cls, self._node):
            index = _NOT_A_NODE
        else:
            matches = (i for i, klass in enumerate(state.classes) if issubclass(cls, klass))
            index = next(matches, _NO_PROCESSOR)
        state.chosen[cls] = index
        return index

    def find_clauses(self, node: Any, clause_types: Any) -> list[Any]:
        """moto's Node.find_clauses, deciding per class whether to descend."""
        clauses: list[Any] = []
        for child in node.children or []:
            cls = type(child)
            if cls in clause_types:
                clauses.append(child)
                continue
            descend = self._descends.get(cls)
            if descend is None:
                descend = self._descends[cls] = issubclass(cls, self._descend_into)
            if descend:
                clauses.extend(child.find_clauses(clause_types))
        return clauses


# --- ConditionExpression -----------------------------------------------------------------------
class _ConditionTemplate(NamedTuple):
    """A parsed ConditionExpression, its placeholders to be filled per request."""

    tree: Any  # moto's ConditionExpressionParser.Node (namedtuples), values from one request
    names: tuple[str, ...]  # the #placeholders moto looks up, in its order
    values: tuple[str, ...]  # the :placeholders moto looks up, in its order
    names_found: tuple[str, ...]  # moto's expr_attr_names_found for this expression
    values_found: tuple[str, ...]  # moto's expr_attr_values_found


def _parse_condition(parser: Any, original_parse: Callable[[Any], Any]) -> Any:
    names = parser.expression_attribute_names
    values = parser.expression_attribute_values
    template: _ConditionTemplate | None = _conditions.get(parser.condition_expression)
    if template is None:
        return _parse_condition_first(parser)
    if type(names) is not dict or type(values) is not dict:
        return original_parse(parser)
    if any(name not in names for name in template.names) or any(
        value not in values for value in template.values
    ):
        return original_parse(parser)  # moto's own error for the missing placeholder
    tree = _bind(parser, template.tree, names, values)
    parser.expr_attr_names_found.extend(template.names_found)
    parser.expr_attr_values_found.extend(template.values_found)
    return parser._make_op_condition(tree)


def _parse_condition_first(parser: Any) -> Any:
    # moto's ConditionExpressionParser.parse (for a non-empty expression),
    # remembering the tree it builds.
    nodes = parser._lex_condition_expression()
    names, values = _placeholders(parser, nodes)
    nodes = parser._parse_paths(nodes)
    nodes = parser._apply_functions(nodes)
    nodes = parser._apply_comparator(nodes)
    nodes = parser._apply_in(nodes)
    nodes = parser._apply_between(nodes)
    nodes = parser._apply_parens_and_booleans(nodes)
    node = nodes[0]
    parser._assert_no_redundant_parentheses(node)
    names_found = parser._find_literals(node)
    values_found = parser._find_expr_attr_values(node)
    parser.expr_attr_names_found.extend(names_found)
    parser.expr_attr_values_found.extend(values_found)
    op = parser._make_op_condition(node)
    _conditions.put(
        parser.condition_expression,
        _ConditionTemplate(node, names, values, tuple(names_found), tuple(values_found)),
    )
    return op


def _placeholders(parser: Any, lexed: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The placeholders ``_parse_paths`` will look up, read from the lexed tokens.

    The same split into path elements as moto's ``_parse_paths``: an element
    starting with ``:`` is looked up in the values, one starting with ``#`` in the
    names (lower-cased keywords and function names never start with either).
    """
    names: list[str] = []
    values: list[str] = []
    for token in lexed:
        if token.nonterminal != parser.Nonterminal.OPERAND:
            continue
        for element in token.value.replace("[", ".[").split("."):
            if element.startswith(":"):
                values.append(element)
            elif element.startswith("#"):
                names.append(element)
    return tuple(names), tuple(values)


def _bind(parser: Any, node: Any, names: Mapping[str, str], values: Mapping[str, Any]) -> Any:
    """A new tree: ``node`` with this request's names and values where moto put its lookups."""
    kinds = parser.Kind
    if node.kind == kinds.EXPRESSION_ATTRIBUTE_VALUE:
        return node._replace(value=values[node.text], children=[])
    if (
        node.kind == kinds.LITERAL
        and node.nonterminal == parser.Nonterminal.IDENTIFIER
        and node.text.startswith("#")
    ):
        return node._replace(value=names[node.text], children=[])
    return node._replace(children=[_bind(parser, child, names, values) for child in node.children])

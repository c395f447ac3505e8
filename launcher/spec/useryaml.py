"""YAML written by users (spec files, ``--set`` values), loaded defensively.

PyYAML's safe loader is safe from code execution, not from everything else: aliases share nodes,
so a few hundred bytes can describe a structure of billions of elements that any later walk
(a deep copy, a repr in an error message) expands; nesting thousands deep overflows Python's
stack; a duplicate key silently keeps the last value. Here the composed node graph is checked
before any Python object is built: expanded size, depth and duplicate keys.
"""

from __future__ import annotations

from typing import Any

import yaml

from launcher.errors import SpecError
from trainer.text import shown

MAX_NODES = 100_000  # nodes after alias expansion; a real spec has a few hundred
MAX_DEPTH = 50
# A real spec is a few KiB; composing a large one takes seconds per 100 KiB. Refused before
# any parsing.
MAX_BYTES = 256 * 1024

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(SpecError):
    """The text is not YAML at all (as opposed to YAML this tool refuses)."""


def decode(data: bytes, where: str) -> str:
    """Text of a spec file: UTF-8 (BOM allowed) or UTF-16/32 with a BOM, as YAML allows; at most
    ``MAX_BYTES``."""
    _fits(len(data), where)
    boms = [(b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
            (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"), (b"\xef\xbb\xbf", "utf-8-sig")]
    encoding = next((enc for bom, enc in boms if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise SpecError("spec", f"{where} is not {encoding.upper()} text (byte "
                        f"0x{data[err.start]:02x} at offset {err.start})") from None


def load(text: str, where: str) -> Any:
    """One YAML document as Python data; ``SpecError`` for invalid YAML, duplicate keys,
    excessive nesting or alias expansion, a value its explicit tag does not fit, or a text over
    ``MAX_BYTES``."""
    _fits(len(text.encode("utf-8", "surrogatepass")), where)
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or "syntax error"
            raise YamlSyntaxError("spec", f"{where} is not valid YAML{at}: {problem}") from None
        except RecursionError:
            raise SpecError("spec", f"{where} is nested too deeply") from None
        if node is None:
            return None
        _check(node, where)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or "cannot be read"
            raise SpecError("spec", f"{where}: {problem}") from None
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            # An explicit tag the value does not fit (``!!int x``, ``!!timestamp x``): PyYAML's
            # constructors raise plain Python errors. Say which value.
            raise SpecError("spec", f"{where}: {_unreadable(node)}") from None
    finally:
        loader.dispose()


def _fits(size: int, where: str) -> None:
    if size > MAX_BYTES:
        raise SpecError("spec", f"{where} is {size:,} bytes; a spec holds at most "
                        f"{MAX_BYTES // 1024} KiB")


def _unreadable(root: yaml.Node) -> str:
    """Which tagged scalar cannot be read as its tag says (the first, in document order)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            try:
                _Loader("").construct_object(node, deep=True)
            except Exception:
                tag = node.tag.rsplit(":", 1)[-1]
                return (f"{shown(node.value)} at line {node.start_mark.line + 1} is not a "
                        f"valid !!{tag}")
        stack.extend(reversed(_children(node)))
    return "a value cannot be read as its YAML tag says"


def _check(root: yaml.Node, where: str) -> None:
    """Expanded size, depth and duplicate keys, without recursion (the graph may be deep)."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    # Iterative post-order over the DAG: shared (aliased) nodes are measured once, as expanded.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            heights[key] = 1 + max((heights[id(c)] for c in children), default=0)
            if heights[key] > MAX_DEPTH:
                raise SpecError("spec", f"{where} is nested more than {MAX_DEPTH} levels deep")
            if sizes[key] > MAX_NODES:
                raise SpecError("spec", f"{where} holds more than {MAX_NODES:,} values "
                                "(YAML aliases counted as expanded)")
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError("spec", f"{where}: a YAML alias refers to its own ancestor")
        if isinstance(node, yaml.MappingNode):
            _no_duplicate_keys(node, where)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _no_duplicate_keys(node: yaml.MappingNode, where: str) -> None:
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            raise SpecError("spec", f"{where}: duplicate key {shown(key.value)} at line "
                            f"{key.start_mark.line + 1}")
        seen.add(ident)

"""Safe YAML for every YAML file tiler reads (jobs, archives, MONAI bundles).

Unique keys and bounded alias expansion on reading, flow-style lists on writing.
"""

from __future__ import annotations

from typing import Any

import yaml

from tiler.errors import ConfigError

MAX_YAML_NODES = 100_000
"""Most nodes a config document may expand to, every alias counted at its full size (a job file has ~100)."""


class _TooLarge(yaml.YAMLError):
    """A document whose aliases expand past :data:`MAX_YAML_NODES` nodes, or refer to themselves."""


def _expanded_size(root: yaml.Node) -> int:
    """Nodes of ``root`` with every alias expanded, without expanding anything (memoised per node).

    Raises:
        _TooLarge: Past :data:`MAX_YAML_NODES`, or on an alias inside its own anchor (a recursive structure).
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_YAML_NODES:
                raise _TooLarge(f"it expands to more than {MAX_YAML_NODES} values through its aliases (*name)")
            continue
        if key in open_nodes:
            raise _TooLarge("an alias (*name) refers to the anchor that contains it (a recursive structure)")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise _TooLarge("an alias (*name) refers to the anchor that contains it (a recursive structure)")
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses repeated keys and alias bombs.

    A key written twice in one mapping is refused (YAML would keep the last silently), and so is a
    document whose aliases expand it past :data:`MAX_YAML_NODES` nodes ("billion laughs").
    """

    def compose_document(self) -> yaml.Node | None:  # type: ignore[override]
        node: yaml.Node | None = super().compose_document()  # type: ignore[no-untyped-call]
        if node is not None:
            _expanded_size(node)
        return node


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely: unique keys, bounded alias expansion; errors are ConfigErrors naming ``source``."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as exc:
        raise ConfigError(
            f"{source}: refused: {exc}; fix: write the values out instead of nesting aliases "
            "(a job file needs few, if any, anchors)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{source}: YAML syntax error{where}: {problem}; fix: correct the YAML there "
            "(indentation, a missing ':' or space after it, an unclosed bracket or quote, a repeated key)"
        ) from None



class _Dumper(yaml.SafeDumper):
    """A safe dumper writing sections as blocks and lists of plain values in flow style ([256, 256])."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flat = all(not isinstance(v, list | dict) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    """Return ``data`` as YAML: keys in their order, sections as blocks, lists of plain values as ``[a, b]``."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)

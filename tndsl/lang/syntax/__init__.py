"""Surface syntax: the Lark grammar's tree as frozen dataclasses with spans."""
from tndsl.lang.syntax.parser import grammar_path, parse_module

__all__ = ["grammar_path", "parse_module"]

"""Parses PromQL expressions and lists what each one reads, for tests/deploy.rs.

stdin: a JSON array of expressions. stdout: a JSON array, one object per expression:
  {"selectors": [{"name": metric, "labels": [label names in its matchers]}],
   "grouping": [label names in `by`/`on`/`group_left`/... clauses]}
or {"error": message} when the expression does not parse. The Rust test decides what is
allowed; this only turns PromQL into plain data with the promql_parser package.
"""

import json
import sys

import promql_parser as p


def walk(node, out):
    if isinstance(node, p.VectorSelector):
        labels = [m.name for m in node.matchers.matchers]
        for group in node.matchers.or_matchers:
            labels.extend(m.name for m in group)
        out["selectors"].append({"name": node.name, "labels": labels})
    elif isinstance(node, p.MatrixSelector):
        walk(node.vector_selector, out)
    elif isinstance(node, p.AggregateExpr):
        if node.modifier is not None:
            out["grouping"].extend(node.modifier.labels)
        if node.param is not None:
            walk(node.param, out)
        walk(node.expr, out)
    elif isinstance(node, p.BinaryExpr):
        modifier = node.modifier
        if modifier is not None:
            if modifier.matching is not None:
                out["grouping"].extend(modifier.matching.labels)
            out["grouping"].extend(modifier.group_labels or [])
        walk(node.lhs, out)
        walk(node.rhs, out)
    elif isinstance(node, p.Call):
        for arg in node.args:
            walk(arg, out)
    elif isinstance(node, (p.ParenExpr, p.UnaryExpr, p.SubqueryExpr)):
        walk(node.expr, out)
    elif isinstance(node, (p.NumberLiteral, p.StringLiteral)):
        pass
    else:
        raise TypeError(f"unexpected PromQL node {type(node).__name__}")


def describe(expression):
    try:
        tree = p.parse(expression)
    except Exception as error:  # the parser raises plain exceptions with the reason
        return {"error": str(error)}
    out = {"selectors": [], "grouping": []}
    walk(tree, out)
    return out


print(json.dumps([describe(expression) for expression in json.load(sys.stdin)]))

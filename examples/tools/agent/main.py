"""Answers arithmetic questions by calling a (local) calculator tool, showing each call.

Input: {"expression": "2 + 3 * 4"}.
"""

import ast
import operator

OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def evaluate(node):
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](evaluate(node.left), evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](evaluate(node.operand))
    raise ValueError("only numbers and + - * / ** are supported")


def handle(payload, ctx):
    if isinstance(payload, dict):
        expression = payload.get("expression", "6 * 7")
    else:
        expression = str(payload)
    call_id = ctx.tool_call("calculator", {"expression": expression})
    result = evaluate(ast.parse(expression, mode="eval"))
    ctx.tool_result("calculator", {"value": result}, call_id=call_id)
    ctx.delta(f"{expression} = {result}")
    return {"expression": expression, "value": result}

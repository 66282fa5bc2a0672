"""The language front end: source text → surface syntax → elaborated, checked IR
(syntax, elaborate, unroll, check, ir, dims, scalars, boxes, fixed, inits, printer, text,
errors).

May import: the standard library, lark, sympy. Never torch, passes, codegen, render,
verify, interp, models or parallel: every other stage builds on this one."""

"""`tndsl cost` and the memory guard at extreme sizes: costs are reported, never refused
or garbled; memory errors are located and in the right unit."""
import json

import pytest

import tndsl
from tndsl.cli import main
from tndsl.lang.errors import ResourceError
from tndsl.passes.cost import costs
from tndsl.passes.plan import DEFAULT_MEMORY_BUDGET, format_bytes

N = 2**40
MATMUL = (f"dim N = {N}\nparam A[a: N, b: N]\nparam B[b: N, c: N]\n"
          "y[a, c] = A[a, b] * B[b, c]\n")


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (DEFAULT_MEMORY_BUDGET, "4.0 GiB"),
    (3 * 2**40 + 2**39, "3.5 TiB"), (2**62, "4.0 EiB"), (2**70, "1.0 ZiB"),
    (2**80 - 1, "1.0 YiB"), (2**80, "1.0 YiB"), (5 * 2**90, "5,120 YiB"),
])
def test_byte_sizes_print_in_the_right_unit(n, text):
    assert format_bytes(n) == text


def test_byte_sizes_of_a_thousand_digits_neither_overflow_nor_print_as_zero():
    n = 7 * 10**1000
    digits = str(n // 2**80)  # YiB, by exact division: the oracle
    assert format_bytes(n) == f"≈{digits[0]}.{digits[1:3]}e+{len(digits) - 1} YiB"


def test_cost_reports_what_compile_refuses(tmp_path, capsys):
    path = tmp_path / "huge.tn"
    path.write_text(MATMUL)
    # Nothing is allocated by `cost`: a 4 YiB param and a 2^80-entry result are costed.
    assert main(["cost", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_value"] == 2 * N**3
    assert report["terms"][0]["largest_value"] == N**2
    assert main(["cost", str(path)]) == 0
    text = capsys.readouterr().out
    assert "largest  N**2 = ≈1.20e+24 entries" in text   # 2^80 = 1.2089e24
    assert "total flops  2*N**3 = ≈2.65e+36" in text     # 2^121 = 2.6585e36
    # `compile` refuses, located at the param, with sizes in the right unit (the cost
    # command used to print its internal budget of 2^62 bytes as "4194304.0 TiB").
    assert main(["compile", str(path)]) == 1
    err = capsys.readouterr().err
    digits = str(N**2)
    assert err.startswith(f"{path}:2:1: error: param `A` needs a tensor of 4.0 YiB "
                          f"(≈{digits[0]}.{digits[1:3]}e+{len(digits) - 1} entries), over "
                          "the memory budget of 4.0 GiB")


def test_an_intermediate_over_the_budget_is_located_at_its_equation():
    text = ("dim N = 100000\ninput u[a: N]\ninput v[b: N]\n"
            "w[a, b] = u[a] * v[b]\n")
    with pytest.raises(ResourceError) as info:
        tndsl.parse(text, "outer.tn").compile(["w"])
    error = info.value
    assert (error.span.line, error.span.col) == (4, 1)
    assert "37.3 GiB (10,000,000,000 entries), over the memory budget of 4.0 GiB" in error.message
    # And `cost` of the same program reports that size instead of refusing.
    report = costs(tndsl.parse(text, "outer.tn"), "w")
    assert report.value(report.terms[0].largest) == 10**10


def test_counts_past_python_int_text_limit_print_in_cost():
    # 250 legs of size 2^62 in one param: products of 4,700 digits, past the 4,300-digit
    # int-to-text limit; `cost` must still print them (and JSON must still load).
    legs = ", ".join(f"l{k}: N" for k in range(250))
    idx = ", ".join(f"l{k}" for k in range(250))
    text = f"dim N = {2**62}\nparam W[{legs}]\nparam V[{legs}]\ny[] = W[{idx}] * V[{idx}]\n"
    report = costs(tndsl.parse(text))
    rendered = report.render()
    exponent = len(str(2 * (2**62) ** 250 // 10**4000)) + 4000 - 1  # digits, by parts
    assert f"e+{exponent}" in rendered
    data = json.loads(report.to_json())
    assert data["total_value"].startswith("≈")

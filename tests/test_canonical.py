"""Canonical forms of tensor-network monomials (verify/canon.py, verify/symbolic.py):
complete on symmetric networks (rings, tournaments, complete graphs, copy-dot stars),
checked against networkx's isomorphism test as an independent oracle."""
import random

import networkx as nx
import pytest

import tndsl
from tndsl.verify import canon, prove_all
from tndsl.verify.symbolic import canonical


def ring(n: int, name: str = "A", tag: str = "x") -> list[tuple[str, tuple[str, ...]]]:
    return [(name, (f"{tag}{k}", f"{tag}{(k + 1) % n}")) for k in range(n)]


def relabel(factors, rng: random.Random, free=frozenset()):
    """The same network with its factors shuffled and its dummies renamed at random."""
    factors = list(factors)
    rng.shuffle(factors)
    dummies = sorted({i for _, idx in factors for i in idx} - set(free))
    names = [f"r{k}" for k in range(len(dummies))]
    rng.shuffle(names)
    rename = dict(zip(dummies, names))
    return tuple((n, tuple(rename.get(i, i) for i in idx)) for n, idx in factors)


def isomorphic(a, b, free) -> bool:
    """The oracle: networkx's VF2 on the bipartite factor–index multigraph, factors
    matched by name, free indices by name, edges by slot."""
    def graph(factors):
        g = nx.MultiGraph()
        for f, (name, indices) in enumerate(factors):
            g.add_node(("f", f), kind=("factor", name, len(indices)))
            for s, index in enumerate(indices):
                g.add_node(("i", index), kind=("free", index) if index in free else ("dummy",))
                g.add_edge(("f", f), ("i", index), slot=s)
        return g

    def edges_match(x, y):
        return sorted(e["slot"] for e in x.values()) == sorted(e["slot"] for e in y.values())

    return nx.is_isomorphic(graph(a), graph(b), node_match=lambda x, y: x["kind"] == y["kind"],
                            edge_match=edges_match)


def fast(fn, nodes: int = 100):
    """fn(), whose canonical-labelling searches may individualise at most `nodes` vertices
    in all: automorphism pruning keeps symmetric networks to a handful of search nodes,
    where without it a ring, tournament or star explores a factorial tree. Counted, not
    timed (no wall-time assertions in tests/); the count is checked as it grows, so a
    search that lost its pruning fails here instead of running for hours."""
    count = 0
    original = canon._individualise

    def counted(p, v):
        nonlocal count
        count += 1
        assert count <= nodes, f"the canonical form searched over {nodes:,} nodes"
        return original(p, v)

    canon._individualise = counted
    try:
        return fn()
    finally:
        canon._individualise = original


@pytest.mark.parametrize("n", [10, 64, 256])
def test_rings_of_identical_tensors(n):
    rng = random.Random(n)
    a = fast(lambda: canonical(tuple(ring(n)), set()))
    assert fast(lambda: canonical(relabel(ring(n), rng), set())) == a
    transposed = ring(n)
    transposed[n // 2] = ("A", transposed[n // 2][1][::-1])
    assert fast(lambda: canonical(relabel(transposed, rng), set())) != a


def test_two_short_rings_are_not_one_long_one():
    two = ring(6, tag="x") + ring(6, tag="y")
    assert canonical(tuple(two), set()) != canonical(tuple(ring(12)), set())
    rng = random.Random(1)
    assert canonical(relabel(two, rng), set()) == canonical(tuple(two), set())


def paley7():
    residues = {1, 2, 4}
    return [("T", (f"v{u}", f"v{v}")) for u in range(7) for v in range(7)
            if (v - u) % 7 in residues]


def test_regular_tournament_and_complete_graphs():
    rng = random.Random(7)
    tournament = paley7()  # vertex-transitive: refinement alone splits nothing
    assert fast(lambda: canonical(relabel(tournament, rng), set())) == \
        canonical(tuple(tournament), set())
    flipped = [("T", tournament[0][1][::-1])] + tournament[1:]
    assert not isomorphic(tuple(flipped), tuple(tournament), set())
    assert canonical(relabel(flipped, rng), set()) != canonical(tuple(tournament), set())
    # K_9 with a symmetric pair of tensors on every edge, and a copy dot at each vertex.
    complete = [(n, (f"v{u}", f"v{v}")) for u in range(9) for v in range(9) if u != v
                for n in ["S"]]
    assert fast(lambda: canonical(relabel(complete, rng), set())) == \
        canonical(tuple(complete), set())


def test_stars_of_copy_dots():
    rng = random.Random(3)
    dot = [("x", ("i",))] * 40
    assert fast(lambda: canonical(relabel(dot, rng), set())) == canonical(tuple(dot), set())
    # 30 identical branches A[i, j_m] * x[j_m] around one copy dot i
    branches = [f for m in range(30) for f in (("A", ("i", f"j{m}")), ("x", (f"j{m}",)))]
    assert fast(lambda: canonical(relabel(branches, rng), set()), nodes=1000) == \
        canonical(tuple(branches), set())
    # ... and with one branch reversed
    other = branches[:-2] + [("A", ("j29", "i")), ("x", ("j29",))]
    assert canonical(tuple(other), set()) != canonical(tuple(branches), set())


def random_network(rng: random.Random):
    arities = {"A": 2, "B": 2, "C": 3, "x": 1}
    free = {"p", "q"}
    pool = [f"d{k}" for k in range(rng.randint(1, 6))] + sorted(free)[:rng.randint(0, 2)]
    factors = []
    for _ in range(rng.randint(1, 8)):
        name = rng.choice("AABBCx")
        factors.append((name, tuple(rng.choice(pool) for _ in range(arities[name]))))
    return factors, free


def test_random_networks_against_the_isomorphism_oracle():
    rng = random.Random(12)
    true = false = 0
    for case in range(500):
        factors, free = random_network(rng)
        key = canonical(tuple(factors), free)
        if case % 2 == 0:
            assert canonical(relabel(factors, rng, free), free) == key, factors
            true += 1
            continue
        # one leg swap: a different network unless the oracle says it is isomorphic
        candidates = [f for f, (_, idx) in enumerate(factors) if len(set(idx)) > 1]
        if not candidates:
            continue
        f = rng.choice(candidates)
        name, idx = factors[f]
        s, t = rng.sample([k for k in range(len(idx))], 2)
        swapped = list(idx)
        swapped[s], swapped[t] = swapped[t], swapped[s]
        changed = factors[:f] + [(name, tuple(swapped))] + factors[f + 1:]
        expected = isomorphic(tuple(changed), tuple(factors), free)
        assert (canonical(relabel(changed, rng, free), free) == key) == expected, factors
        false += not expected
    assert true == 250 and false > 150  # mostly real refutations, not isomorphic swaps


# ---- through `tndsl verify`: the cases from the issue ------------------------------------

def tn_ring(factors) -> str:
    return " * ".join(f"{n}[{', '.join(i)}]" for n, i in factors)


def verify(checks: dict[str, str], dims: str = "dim N = 3\nparam A[i: N, j: N]\n"):
    text = dims + "".join(f"check {label}: {body}\n" for label, body in checks.items())
    return {r.label: r for r in prove_all(tndsl.parse(text))}


def test_shuffled_rings_and_tournaments_are_proven_symbolically():
    rng = random.Random(0)
    results = fast(lambda: verify({
        "ring10": f"{tn_ring(ring(10))} == {tn_ring(relabel(ring(10), rng))}",
        "ring64": f"{tn_ring(ring(64))} == {tn_ring(relabel(ring(64), rng))}",
        "tournament": f"{tn_ring(paley7())} == {tn_ring(relabel(paley7(), rng))}",
    }, "dim N = 3\nparam A[i: N, j: N]\nparam T[i: N, j: N]\n"))
    for result in results.values():
        assert (result.status, result.tier) == ("proven", "symbolic"), result.render()


def test_one_transposed_factor_and_two_rings_are_refuted():
    rng = random.Random(0)
    transposed = ring(12)
    transposed[5] = ("A", transposed[5][1][::-1])
    results = fast(lambda: verify({
        "transposed": f"{tn_ring(ring(12))} == {tn_ring(relabel(transposed, rng))}",
        "squares": f"{tn_ring(ring(6, tag='x') + ring(6, tag='y'))} == {tn_ring(ring(12))}",
    }))
    transposed_result = results["transposed"]
    assert transposed_result.status == "refuted", transposed_result.render()
    assert len(transposed_result.residual) == 2
    assert any(term.startswith("-") for term in transposed_result.residual)
    squares = results["squares"]
    assert squares.status == "refuted", squares.render()
    assert len(squares.residual) == 2


# ---- boxes are named structurally --------------------------------------------------------

@pytest.mark.parametrize("layers", [2, 3, 4, 5, pytest.param(6, marks=pytest.mark.slow)])
def test_attention_only_path_expansion_is_proven_symbolically(layers):
    from networks import attn_only
    (result,) = prove_all(tndsl.parse(attn_only(layers)))
    assert (result.status, result.tier) == ("proven", "symbolic"), result.render()
    assert f"{2 ** (layers + 1)} monomials on each side" in result.detail


def test_attention_only_path_expansion_missing_a_layer_is_refuted():
    from networks import attn_only
    (result,) = prove_all(tndsl.parse(attn_only(3, drop=1)))
    assert result.status != "proven", result.render()
    # what does not cancel is exactly layer 1's heads: its pattern in every term
    assert result.residual and all("blocks.1.attn.pattern[" in t for t in result.residual)


def test_boxes_match_whatever_their_slots_are_called():
    # u's two non-axis slots are symmetric, so only the graph search orders them.
    program = tndsl.parse(
        "dim N = 3\nparam A[i: N, j: N, k: N]\nparam B[i: N, j: N, k: N]\n"
        "u[a, b, c] = softmax[c](A[a, b, c] + A[b, a, c])\n"
        "w[a, b, c] = softmax[c](A[a, b, c] * B[b, a, c])\n"
        "check renamed: u[p, q, r] == softmax[r](A[q, p, r] + A[p, q, r])\n"
        "check other_axis: u[p, q, r] == softmax[q](A[p, q, r] + A[q, p, r])\n"
        "check not_symmetric: w[p, q, r] == w[q, p, r]\n")
    renamed, other_axis, not_symmetric = prove_all(program)
    assert (renamed.status, renamed.tier) == ("proven", "symbolic"), renamed.render()
    assert other_axis.status == "refuted", other_axis.render()
    assert not_symmetric.status == "refuted", not_symmetric.render()


def test_trace_of_a_sum_to_the_eleventh_collects_into_necklaces():
    # tr((A + B)^11) expands to 2^11 words; cyclic rotations are equal monomials, so what
    # remains is one monomial per binary necklace of length 11, which Burnside's lemma
    # counts: (1/11) * sum over d | 11 of phi(d) * 2^(11/d) = (2^11 + 10 * 2) / 11 = 188.
    n = 11
    lhs = " * ".join(f"(A[x{k}, x{(k + 1) % n}] + B[x{k}, x{(k + 1) % n}])" for k in range(n))
    start = [3, 4, 5, 6, 7, 8, 9, 10, 0, 1, 2]
    rhs = " * ".join(f"(B[y{k}, y{(k + 1) % n}] + A[y{k}, y{(k + 1) % n}])" for k in start)
    (result,) = fast(lambda: list(verify(
        {"sum": f"{lhs} == {rhs}"},
        "dim N = 3\nparam A[i: N, j: N]\nparam B[i: N, j: N]\n").values()))
    assert (result.status, result.tier) == ("proven", "symbolic"), result.render()
    assert result.detail.startswith(f"{(2 ** 11 + 10 * 2) // 11} monomials on each side")


def test_random_networks_through_the_verifier():
    # The same oracle, end to end: `.tn` checks proven by the symbolic tier when the
    # right side is a relabelling, not proven (with a residual) after one leg swap that
    # networkx says makes a different network.
    rng = random.Random(2012)
    shapes = "dim N = 3\nparam A[i: N, j: N]\nparam B[i: N, j: N]\n" \
             "param C[i: N, j: N, k: N]\nparam x[i: N]\n"
    checks, expected = {}, {}
    while len(checks) < 60:
        factors, free = random_network(rng)
        counts = {}
        for _, idx in factors:
            for i in idx:
                counts[i] = counts.get(i, 0) + 1
        if any(n == 1 for i, n in counts.items() if i not in free):
            continue  # a dummy used once would be an open leg
        legs = sorted(free & set(counts))
        label = f"c{len(checks)}"
        if len(checks) % 2 == 0:
            other, truth = relabel(factors, rng, free), True
        else:
            candidates = [f for f, (_, idx) in enumerate(factors) if len(set(idx)) > 1]
            if not candidates:
                continue
            f = rng.choice(candidates)
            name, idx = factors[f]
            s, t = rng.sample(range(len(idx)), 2)
            swapped = list(idx)
            swapped[s], swapped[t] = swapped[t], swapped[s]
            other = factors[:f] + [(name, tuple(swapped))] + factors[f + 1:]
            truth = isomorphic(tuple(other), tuple(factors), free)
            other = relabel(other, rng, free)
        checks[label] = f"[{', '.join(legs)}] {tn_ring(factors)} == {tn_ring(other)}"
        expected[label] = truth
    results = verify(checks, shapes)
    assert sum(not t for t in expected.values()) >= 20
    for label, truth in expected.items():
        result = results[label]
        if truth:
            assert (result.status, result.tier) == ("proven", "symbolic"), result.render()
        else:
            assert result.status != "proven" and result.residual, result.render()


def test_a_box_is_shown_with_its_slots_where_they_belong():
    # The softmax's axis and the mask put the slots of this anonymous box in another
    # order than written (s, p, h → canonical), which the residual must undo.
    program = tndsl.parse(
        "dim N = 3\ndim M = 4\nparam A[i: N, j: N, k: M]\nparam B[i: N, j: N, k: M]\n"
        "check boxed: softmax[s](A[p, s, h] where s <= p) * B[p, s, h] == "
        "softmax[s](A[s, p, h] where s <= p) * B[p, s, h]\n")
    (result,) = prove_all(program)
    assert result.status == "refuted", result.render()
    assert set(result.residual) == {
        "B[i1, i2, i3] * softmax[i2](A[i1, i2, i3] where i2 <= i1)",
        "-B[i1, i2, i3] * softmax[i2](A[i2, i1, i3] where i2 <= i1)"}

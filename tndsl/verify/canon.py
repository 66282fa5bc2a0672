"""Canonical labelling of vertex-coloured, edge-labelled graphs by individualisation–
refinement with automorphism pruning (the scheme of McKay's nauty and of bliss).

Why our own: no maintained Python binding that handles coloured vertices and labelled
edges installs offline here (pynauty is not on the package index we can reach, and
networkx only tests isomorphism pairwise, it gives no canonical form). The graphs the
verifier builds are small (a monomial has tens of factors) but can be very symmetric
(a ring of 256 identical tensors, a regular tournament, a star of copy dots), which is
exactly the case refinement alone cannot split and a fixed tie-break cap gets wrong.

The search:
- **Refinement** splits an ordered partition of the vertices until it is equitable
  (every vertex of a cell has the same multiset of edge labels into every cell), with
  Hopcroft's queue: a cell that splits re-enters the queue in all its parts but the
  largest (when it had already been used), so work is proportional to the edges that
  actually change colour. Every choice depends only on cell positions and labels,
  never on vertex numbers, so the result is invariant under relabelling.
- **Individualisation**: while some cell has more than one vertex, each vertex of the
  first smallest such cell is tried in turn as a singleton, and refinement runs again.
  Leaves are discrete partitions, that is orderings of the vertices; the canonical
  labelling is the leaf whose certificate (supplied by the caller) is smallest.
- **Automorphism pruning**: two leaves with equal certificates give an automorphism.
  At a node, children in the same orbit of the automorphisms found so far that fix the
  node's path are equivalent and only one is explored; and when a leaf matches the first
  or the best leaf, the search jumps back to where the two paths diverge, since the
  subtree it is in is the image of one already explored.

The result is exact (the set of leaf certificates is an isomorphism invariant, and
pruning only skips subtrees with the same certificates); there is no cap on the number
of orders tried. A `deadline` (perf_counter seconds) bounds the time instead.
"""
from __future__ import annotations

import heapq
import time
from typing import Callable, Hashable, Sequence


class TimeBudget(Exception):
    """The search passed its deadline."""


class _Partition:
    """An ordered partition: `lab` lists the vertices cell by cell, `start[v]` is the
    position where v's cell begins, `size[p]` the size of the cell beginning at p."""

    __slots__ = ("lab", "pos", "start", "size", "cells")

    def __init__(self, lab, pos, start, size, cells):
        self.lab, self.pos, self.start, self.size, self.cells = lab, pos, start, size, cells

    def copy(self) -> "_Partition":
        return _Partition(self.lab[:], self.pos[:], self.start[:], dict(self.size), self.cells)


def _refine(p: _Partition, adjacency: Sequence[Sequence[tuple[int, int]]],
            queue: list[int]) -> None:
    """Refine `p` in place to an equitable partition, starting from the splitter cells
    beginning at the positions in `queue`."""
    heap = sorted(set(queue))
    queued = set(heap)
    lab, pos, start, size = p.lab, p.pos, p.start, p.size
    while heap:
        w = heapq.heappop(heap)
        queued.discard(w)
        labels: dict[int, list[int]] = {}
        for v in lab[w:w + size[w]]:
            for u, label in adjacency[v]:
                if u in labels:
                    labels[u].append(label)
                else:
                    labels[u] = [label]
        touched_cells: dict[int, list[int]] = {}
        for u in labels:
            c = start[u]
            if size[c] > 1:
                touched_cells.setdefault(c, []).append(u)
        for c in sorted(touched_cells):
            touched = touched_cells[c]
            n = size[c]
            groups: dict[tuple, list[int]] = {}
            for u in touched:
                groups.setdefault(tuple(sorted(labels[u])), []).append(u)
            if len(groups) == 1 and len(touched) == n:
                continue  # every vertex of the cell sees the splitter the same way
            # Untouched vertices (no edge into the splitter) stay first; the touched
            # ones move to the tail, grouped in the order of their labels.
            head_end = c + n - len(touched)
            inside = set(touched)
            stray = [i for i in range(head_end, c + n) if lab[i] not in inside]
            misplaced = [u for u in touched if pos[u] < head_end]
            for i, u in zip(stray, misplaced):
                v, j = lab[i], pos[u]
                lab[i], lab[j], pos[u], pos[v] = u, v, i, j
            parts = []
            if head_end > c:
                parts.append((c, head_end - c))
            k = head_end
            for key in sorted(groups):
                members = groups[key]
                parts.append((k, len(members)))
                first = k
                for u in members:
                    lab[k], pos[u], start[u] = u, k, first
                    k += 1
            for s, m in parts:
                size[s] = m
            p.cells += len(parts) - 1
            if c in queued:
                new = [s for s, _ in parts if s != c]
            else:  # Hopcroft: what the largest part sees follows from the others
                largest = max(parts, key=lambda part: (part[1], -part[0]))
                new = [s for s, _ in parts if s != largest[0]]
            for s in new:
                if s not in queued:
                    queued.add(s)
                    heapq.heappush(heap, s)


def _individualise(p: _Partition, v: int) -> int:
    """Make v a singleton cell at the front of its cell; returns its position."""
    c = p.start[v]
    n = p.size[c]
    lab, pos = p.lab, p.pos
    j = pos[v]
    u = lab[c]
    lab[c], lab[j], pos[v], pos[u] = v, u, c, j
    p.size[c] = 1
    p.size[c + 1] = n - 1
    for i in range(c + 1, c + n):
        p.start[lab[i]] = c + 1
    p.cells += 1
    return c


def _target_cell(p: _Partition) -> int:
    """The first smallest non-singleton cell (an invariant choice)."""
    best, best_size = -1, 0
    i, n = 0, len(p.lab)
    while i < n:
        m = p.size[i]
        if m > 1 and (best < 0 or m < best_size):
            best, best_size = i, m
            if m == 2:
                break
        i += m
    return best


class _Orbits:
    """Union–find of the orbits of the automorphisms that fix a given path."""

    def __init__(self, n: int, fixed: Sequence[int]):
        self.parent = list(range(n))
        self.fixed = fixed
        self.seen = 0  # automorphisms already looked at

    def find(self, v: int) -> int:
        parent = self.parent
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    def update(self, automorphisms: list[list[int]]) -> None:
        for gamma in automorphisms[self.seen:]:
            if all(gamma[v] == v for v in self.fixed):
                for v, w in enumerate(gamma):
                    a, b = self.find(v), self.find(w)
                    if a != b:
                        self.parent[max(a, b)] = min(a, b)
        self.seen = len(automorphisms)


def canonical_labelling(colours: Sequence[Hashable], adjacency: Sequence[Sequence[tuple[int, int]]],
                        certificate: Callable[[list[int]], tuple], *,
                        deadline: float | None = None) -> tuple[tuple, list[int]]:
    """The smallest certificate over the leaves of the search, and its vertex order.

    `colours[v]` is v's initial colour (mutually comparable values); `adjacency[v]`
    lists (neighbour, label) pairs, each edge listed from both ends with the same
    integer label; `certificate(order)` serialises the graph with its vertices in that
    order, and must determine the graph up to that order (a complete invariant)."""
    n = len(colours)
    order = sorted(range(n), key=lambda v: colours[v])
    lab, pos, start, size = order, [0] * n, [0] * n, {}
    cells, i = 0, 0
    while i < n:
        j = i
        while j < n and colours[order[j]] == colours[order[i]]:
            j += 1
        size[i] = j - i
        for k in range(i, j):
            pos[order[k]], start[order[k]] = k, i
        cells += 1
        i = j
    root = _Partition(lab, pos, start, size, cells)
    _refine(root, adjacency, list(size))

    best: list = [None, None, None]        # certificate, order, path
    first: list = [None, None, None]
    automorphisms: list[list[int]] = []

    def record(order_a: list[int], order_b: list[int]) -> None:
        gamma = [0] * n
        for a, b in zip(order_a, order_b):
            gamma[a] = b
        automorphisms.append(gamma)

    def common(path_a, path_b) -> int:
        k = 0
        for a, b in zip(path_a, path_b):
            if a != b:
                break
            k += 1
        return k

    def search(p: _Partition, path: list[int]) -> int:
        """Explores the subtree at `p`; returns the level to jump back to (len(path)
        to continue normally)."""
        if p.cells == n:
            if deadline is not None and time.perf_counter() > deadline:
                raise TimeBudget
            cert = certificate(p.lab)
            if first[0] is None:
                first[:] = [cert, p.lab[:], path[:]]
                best[:] = [cert, p.lab[:], path[:]]
                return len(path)
            if cert == first[0]:
                record(first[1], p.lab)
                return common(path, first[2])
            if cert == best[0]:
                record(best[1], p.lab)
                return common(path, best[2])
            if cert < best[0]:
                best[:] = [cert, p.lab[:], path[:]]
            return len(path)
        c = _target_cell(p)
        members = sorted(p.lab[c:c + p.size[c]])
        orbits = _Orbits(n, tuple(path))
        explored: set[int] = set()
        level = len(path)
        for v in members:
            if explored:
                orbits.update(automorphisms)
                if orbits.find(v) in {orbits.find(u) for u in explored}:
                    continue
            explored.add(v)
            child = p.copy()
            _individualise(child, v)
            _refine(child, adjacency, [child.start[v]])
            path.append(v)
            jump = search(child, path)
            path.pop()
            if jump < level:
                return jump
        return level

    search(root, [])
    return best[0], best[1]

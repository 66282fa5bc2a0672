"""Interpretability on networks: a tensor network read as a matrix, without building it.

A `NetworkMatrix` is a product of tensors with some free legs as rows and the others as
columns (the full OV circuit `W_E W_V W_O W_U`: vocab × vocab). It is split at its
cheapest bottleneck into `A · B` (rows × bond, bond × columns), found by trying every
cut of the network; then

- the Frobenius norm is the ring `tr((AᵀA)(BBᵀ))`, a bond × bond contraction;
- the trace of a square one is `tr(BA)`;
- its nonzero eigenvalues are those of the small `B · A`;
- its singular values are those of `R_A R_Bᵀ` from QR factors of `A` and `Bᵀ`;
- chosen rows are `A[rows] · B`.

Materialising the whole matrix is refused past a memory budget, with its size and the
call that avoids it.

On top: QK and OV circuits per head, composition scores with a random-matrix baseline,
and copying scores (Elhage et al., *A mathematical framework for transformer circuits*).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import opt_einsum
import torch

from tndsl.lang import dims as dimmod
from tndsl.lang.errors import ResourceError, TnError

DEFAULT_BUDGET = 2**30  # bytes a materialised matrix may take (4 bytes an entry)
MAX_FACTORS = 12        # cuts are searched exhaustively: 2**12 at most


@dataclass(frozen=True)
class _Factor:
    value: torch.Tensor
    indices: tuple[str, ...]


class NetworkMatrix:
    """A product of tensors viewed as a matrix with `rows` legs × `cols` legs."""

    def __init__(self, factors: Sequence[tuple[torch.Tensor, Sequence[str]]],
                 rows: Sequence[str], cols: Sequence[str], *,
                 budget: int = DEFAULT_BUDGET):
        self.factors = [_Factor(v, tuple(i)) for v, i in factors]
        self.rows, self.cols = tuple(rows), tuple(cols)
        self.budget = budget
        self.sizes: dict[str, int] = {}
        for f in self.factors:
            if f.value.dim() != len(f.indices):
                raise TnError(f"a factor has {f.value.dim()} dims but {len(f.indices)} indices")
            for index, size in zip(f.indices, f.value.shape):
                if self.sizes.setdefault(index, size) != size:
                    raise TnError(f"index `{index}` has sizes {self.sizes[index]} and {size}")
        counts = {}
        for f in self.factors:
            for index in f.indices:
                counts[index] = counts.get(index, 0) + 1
        free = {i for i, n in counts.items() if n == 1}
        if set(self.rows) | set(self.cols) != free or set(self.rows) & set(self.cols):
            raise TnError(f"rows and columns must split the open legs {sorted(free)}")
        self._split: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_equation(cls, program, name: str, weights: Mapping[str, torch.Tensor],
                      rows: Sequence[str], cols: Sequence[str], *,
                      fixed: Mapping[str, int] | None = None,
                      budget: int = DEFAULT_BUDGET) -> "NetworkMatrix":
        """The network of a `.tn` equation as a matrix: `ov_circuit0[h, w, u]` with
        rows ["w"], columns ["u"] and fixed={"h": 3} is head 3's full OV circuit. The
        equation must expand (inlining definitions) to one box-free product of params;
        `weights` maps param paths to values (a compiled model's `named_weights`)."""
        from tndsl.verify.symbolic import Expander
        eq = program.equation(name)
        fixed = dict(fixed or {})
        if set(rows) | set(cols) | set(fixed) != set(eq.indices):
            raise TnError(f"`{name}` has legs {list(eq.indices)}: give each as a row, a column "
                          "or a fixed position")
        expander = Expander(program)
        poly = expander.side(eq.rhs, eq.indices, {l.name: l.dim for l in eq.index_dims})
        if expander.has_boxes or len(poly) != 1:
            raise TnError(f"`{name}` is not a single box-free product ({len(poly)} monomials"
                          f"{', with boxes' if expander.has_boxes else ''})")
        ((monomial, coefficient),) = poly.items()
        factors = []
        for tensor, indices in monomial:
            if tensor not in weights:
                raise TnError(f"no value for `{tensor}` in the weights given")
            value = weights[tensor]
            kept = []
            for axis, index in reversed(list(enumerate(indices))):
                if index in fixed:  # a fixed leg: take that slice
                    value = value.select(axis, fixed[index])
                else:
                    kept.append(index)
            factors.append((value, tuple(reversed(kept))))
        scale = float(dimmod.evaluate(coefficient, program.sizes))
        factors[0] = (factors[0][0] * scale, factors[0][1])
        return cls(factors, rows, cols, budget=budget)

    @classmethod
    def chain(cls, *matrices: torch.Tensor, budget: int = DEFAULT_BUDGET) -> "NetworkMatrix":
        """The product of 2-D matrices M1 M2 ... Mn."""
        names = [f"i{k}" for k in range(len(matrices) + 1)]
        factors = [(m, (names[k], names[k + 1])) for k, m in enumerate(matrices)]
        return cls(factors, [names[0]], [names[-1]], budget=budget)

    @property
    def shape(self) -> tuple[int, int]:
        return (math.prod(self.sizes[i] for i in self.rows),
                math.prod(self.sizes[i] for i in self.cols))

    # ---- the bottleneck ------------------------------------------------------------------
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with this matrix = A @ B and the inner size as small as any cut allows."""
        if self._split is None:
            self._split = self._cheapest_split()
        return self._split

    def _cheapest_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.factors)
        if n > MAX_FACTORS:
            raise TnError(f"a network of {n} tensors; circuits search cuts of at most "
                          f"{MAX_FACTORS}")
        row_side = {k for k, f in enumerate(self.factors) if set(f.indices) & set(self.rows)}
        col_side = {k for k, f in enumerate(self.factors) if set(f.indices) & set(self.cols)}
        if row_side & col_side:
            raise TnError("a single tensor holds both row and column legs; this network has "
                          "no cut, materialise it instead")
        best = None
        rest = [k for k in range(n) if k not in row_side | col_side]
        for r in range(len(rest) + 1):
            for extra in itertools.combinations(rest, r):
                left = row_side | set(extra)
                bond = self._bond(left)
                size = math.prod(self.sizes[i] for i in bond)
                key = (size, len(bond), sorted(left))
                if best is None or key < best[0]:
                    best = (key, left, bond)
        _, left, bond = best
        right = set(range(n)) - left
        a = self._contract(left, self.rows + bond).reshape(self.shape[0], -1)
        b = self._contract(right, bond + self.cols).reshape(-1, self.shape[1])
        return a, b

    def _bond(self, left: set[int]) -> tuple[str, ...]:
        inside = {i for k in left for i in self.factors[k].indices}
        outside = {i for k, f in enumerate(self.factors) if k not in left for i in f.indices}
        return tuple(sorted((inside & outside) - set(self.rows) - set(self.cols)))

    def _contract(self, which: set[int], output: tuple[str, ...]) -> torch.Tensor:
        chosen = [self.factors[k] for k in sorted(which)]
        letters = {name: opt_einsum.get_symbol(k) for k, name in enumerate(sorted(self.sizes))}
        spec = ",".join("".join(letters[i] for i in f.indices) for f in chosen) + "->" + \
            "".join(letters[i] for i in output)
        return opt_einsum.contract(spec, *(f.value for f in chosen), backend="torch")

    # ---- what a matrix is asked ---------------------------------------------------------
    def frobenius_norm(self) -> torch.Tensor:
        a, b = self.split()
        return torch.sqrt(torch.trace((a.T @ a) @ (b @ b.T)).clamp(min=0))

    def trace(self) -> torch.Tensor:
        if self.shape[0] != self.shape[1]:
            raise TnError(f"trace of a {self.shape[0]} x {self.shape[1]} matrix")
        a, b = self.split()
        return torch.trace(b @ a)

    def eigenvalues(self, tolerance: float = 1e-10) -> torch.Tensor:
        """The nonzero eigenvalues (complex), from the bond × bond matrix B A."""
        if self.shape[0] != self.shape[1]:
            raise TnError(f"eigenvalues of a {self.shape[0]} x {self.shape[1]} matrix")
        a, b = self.split()
        values = torch.linalg.eigvals(b @ a)
        scale = values.abs().max() if values.numel() else 0
        return values[values.abs() > tolerance * max(float(scale), 1e-300)]

    def singular_values(self) -> torch.Tensor:
        """The singular values (at most the bond size of them), largest first."""
        a, b = self.split()
        _, r_a = torch.linalg.qr(a)
        _, r_b = torch.linalg.qr(b.T)
        return torch.linalg.svdvals(r_a @ r_b.T)

    def rows_of(self, rows: Sequence[int]) -> torch.Tensor:
        """Chosen rows of the matrix, materialised: A[rows] @ B."""
        a, b = self.split()
        return a[list(rows)] @ b

    def top_k(self, rows: Sequence[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest entries of each chosen row: (values, column indices)."""
        return torch.topk(self.rows_of(rows), k, dim=-1)

    def materialize(self) -> torch.Tensor:
        entries = self.shape[0] * self.shape[1]
        if entries * 4 > self.budget:
            a, _ = self.split()
            raise ResourceError(
                f"materialising this {self.shape[0]:,} x {self.shape[1]:,} matrix takes "
                f"{entries * 4 / 2**30:.1f} GiB, over the budget of {self.budget / 2**30:.1f} GiB",
                hint=f"it factors through {a.shape[1]} dims: use frobenius_norm(), trace(), "
                     "eigenvalues(), singular_values() or rows_of(...)")
        a, b = self.split()
        return a @ b


# ---- circuits of attention heads --------------------------------------------------------

def shared_head(head: int, heads: int, kv_heads: int) -> int:
    """The key/value head a query head reads under grouped-query attention (the
    `grouping` fixed tensor: query heads in order, `heads / kv_heads` per group)."""
    if heads % kv_heads:
        raise TnError(f"{heads} query heads cannot share {kv_heads} key/value heads equally")
    return head // (heads // kv_heads)


def qk_matrix(w_q: torch.Tensor, w_k: torch.Tensor, head: int) -> NetworkMatrix:
    """W_QK = W_Q W_Kᵀ of one head (model × model), with W_Q[h, m, e] as in the examples;
    with fewer key heads (GQA, W_K[g, m, e]) the query head's shared one is used."""
    return NetworkMatrix.chain(w_q[head], w_k[shared_head(head, len(w_q), len(w_k))].T)


def ov_matrix(w_v: torch.Tensor, w_o: torch.Tensor, head: int) -> NetworkMatrix:
    """W_OV = W_V W_O of one head (model × model); GQA as in `qk_matrix`."""
    return NetworkMatrix.chain(w_v[shared_head(head, len(w_o), len(w_v))], w_o[head])


def full_qk_circuit(w_e, w_q, w_k, head: int) -> NetworkMatrix:
    """W_E W_Q W_Kᵀ W_Eᵀ: how much a query token attends to a key token (vocab × vocab)."""
    return NetworkMatrix.chain(w_e, w_q[head], w_k[shared_head(head, len(w_q), len(w_k))].T,
                               w_e.T)


def full_ov_circuit(w_e, w_v, w_o, w_u, head: int) -> NetworkMatrix:
    """W_E W_V W_O W_U: what attending to a token does to each logit (vocab × vocab)."""
    return NetworkMatrix.chain(w_e, w_v[shared_head(head, len(w_o), len(w_v))], w_o[head],
                               w_u)


def copying_score(circuit: NetworkMatrix) -> float:
    """Σλ / Σ|λ| over the nonzero eigenvalues (real part): 1 for a pure copying head."""
    values = circuit.eigenvalues()
    return float(values.real.sum() / values.abs().sum())


def composition_score(left: NetworkMatrix, right: NetworkMatrix) -> float:
    """‖left · right‖_F / (‖left‖_F ‖right‖_F), all through the factored forms."""
    a_left, b_left = left.split()
    a_right, b_right = right.split()
    product = NetworkMatrix.chain(a_left, b_left @ a_right, b_right)
    return float(product.frobenius_norm() / (left.frobenius_norm() * right.frobenius_norm()))


def composition_baseline(model: int, head: int, samples: int = 200, seed: int = 0) -> float:
    """The mean composition score of random matrices of the same low-rank shapes
    (Gaussian W_A = X Y, W_B = Z W with inner size `head`): what chance gives."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(samples):
        x, y, z, w = (torch.randn(s, generator=generator, dtype=torch.float64)
                      for s in ((model, head), (head, model), (model, head), (head, model)))
        scores.append(composition_score(NetworkMatrix.chain(x, y), NetworkMatrix.chain(z, w)))
    return sum(scores) / len(scores)


def composition_scores(w_q0, w_k0, w_v0, w_o0, w_q1, w_k1, w_v1, w_o1, kind: str
                       ) -> torch.Tensor:
    """Scores [head in layer 0, head in layer 1] for kind "q", "k" or "v": layer 0's OV
    circuit feeding layer 1's queries, keys or values (ARENA's conventions)."""
    heads0, heads1 = w_v0.shape[0], w_q1.shape[0]
    out = torch.zeros(heads0, heads1, dtype=torch.float64)
    for i in range(heads0):
        ov = ov_matrix(w_v0, w_o0, i)
        for j in range(heads1):
            if kind == "q":
                right = qk_matrix(w_q1, w_k1, j)
            elif kind == "k":
                right = NetworkMatrix.chain(w_k1[j], w_q1[j].T)  # W_QKᵀ
            elif kind == "v":
                right = ov_matrix(w_v1, w_o1, j)
            else:
                raise TnError(f"unknown composition `{kind}`; valid: q, k, v")
            out[i, j] = composition_score(ov, right)
    return out


def named_weights(model: torch.nn.Module) -> Mapping[str, torch.Tensor]:
    """A compiled model's params by path, detached."""
    return {name: p.detach() for name, p in model.named_parameters()}

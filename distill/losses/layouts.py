"""State layouts: how the forward-backward passes see a batch of graphs.

`Layout` states the interface once. Two things vary between layouts, and each concrete layout supplies
only those: the **domain** of state values (probability or log) and the **arrangement** of the states
(one shared graph, or a block-diagonal stack of per-utterance graphs). What follows from them
(normalising, the beta pass's start, the final sum, the viability mask) is written once, in `Layout`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from distill.losses.compiled_graph import NEG_INF, CompiledGraph

__all__ = ["FlatLayout", "Layout", "SharedLayout"]


class Layout(ABC):
    """A batch of B utterances on graphs, as state vectors of one fixed shape, written [*S] below.

    Values live in the layout's domain: probabilities (``log_space = False``: product ``*``, zero 0)
    or logs (``True``: product ``+``, zero ``-inf``). Per-utterance values ([B], such as the per-frame
    normalisers c) are in the domain too unless named ``log``. Emissions and occupancies are per label:
    [B, V] per frame, V = ``num_labels``.
    """

    log_space: bool
    zero: float  # the domain's zero (an unreachable state)

    def __init__(
        self,
        batch: int,
        num_labels: int,
        dtype: torch.dtype,
        arc_shift: float,
        final_shift: float,
        dist: torch.Tensor | None,
    ) -> None:
        """``arc_shift``/``final_shift``: log weights taken out of every arc / final weight (added back to
        logZ); ``dist``: fewest frames from each state to a final state, per state of the graph (None:
        every state is final, nothing to mask)."""
        self.batch, self.num_labels, self.dtype = batch, num_labels, dtype
        self.arc_shift, self.final_shift = arc_shift, final_shift
        self.dist = dist

    # ---------------------------------------------------------------- the domain
    @abstractmethod
    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The domain's product (``a * b`` or ``a + b``)."""

    @abstractmethod
    def div(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The domain's quotient (``a / b`` or ``a - b``)."""

    @abstractmethod
    def from_log(self, x: torch.Tensor) -> torch.Tensor:
        """Log values into the domain (``exp`` or the identity)."""

    @abstractmethod
    def log_norm(self, c: torch.Tensor) -> torch.Tensor:
        """Domain values (the normalisers [T, B]) as logs (``log`` or the identity)."""

    @abstractmethod
    def prob(self, v: torch.Tensor) -> torch.Tensor:
        """Domain values as probabilities (the identity or ``exp``)."""

    # ---------------------------------------------------------------- the arrangement
    @abstractmethod
    def init(self) -> torch.Tensor:
        """Initial weights [*S]: alpha before the first frame's emission."""

    @abstractmethod
    def final(self) -> torch.Tensor:
        """Final weights, broadcastable to [*S]."""

    @abstractmethod
    def final_start(self) -> torch.Tensor:
        """log score [B] (float64) of an empty utterance: the start state's final weight."""

    @abstractmethod
    def state_numel(self) -> int:
        """Entries of one state vector (the size of [*S])."""

    @abstractmethod
    def per_state(self, v: torch.Tensor) -> torch.Tensor:
        """Per-utterance values [B] broadcast to the states: broadcastable to [*S]."""

    @abstractmethod
    def gather(self, frame: torch.Tensor) -> torch.Tensor:
        """Per-label values of one frame [B, V] at each state's label -> [*S]."""

    @abstractmethod
    def gather_block(self, e: torch.Tensor) -> torch.Tensor:
        """Per-label values of K frames [B, K, V] at each state's label -> [K, *S]."""

    @abstractmethod
    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        """One transition forward, ``a @ M`` in the domain: [*S] -> [*S]."""

    @abstractmethod
    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        """One transition backward, ``b @ M^T`` in the domain: [*S] -> [*S]."""

    @abstractmethod
    def utt_norm(self, a: torch.Tensor) -> torch.Tensor:
        """Per-utterance normaliser [B] of a state vector: its sum (probability) or its max (log)."""

    @abstractmethod
    def utt_log_sum(self, v: torch.Tensor) -> torch.Tensor:
        """log of the per-utterance sum of a state vector [*S] -> [B]."""

    @abstractmethod
    def to_labels(self, gam: torch.Tensor) -> torch.Tensor:
        """Per-state probabilities [*S] summed per label -> [B, V]."""

    @abstractmethod
    def to_labels_block(self, gam: torch.Tensor) -> torch.Tensor:
        """Per-state probabilities of K frames [K, *S] summed per label -> [K, B, V]."""

    # ---------------------------------------------------------------- shared by every layout
    def unnorm(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``v`` divided, per utterance, by the normaliser c [B]."""
        return self.div(v, self.per_state(c))

    def normalize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a / c, c) with c = `utt_norm` [B]; a dead utterance (c is the domain's zero) is detected
        afterwards from the normalisers (`is_dead`)."""
        c = self.utt_norm(a)
        return self.unnorm(a, c), c

    def is_dead(self, c: torch.Tensor) -> torch.Tensor:
        """Normalisers that are zero in the domain: no path is left."""
        return c <= self.zero

    def emis_block(self, shifted: torch.Tensor) -> torch.Tensor:
        """Per-state emissions in the domain of a block of shifted log scores [B, K, V] -> [K, *S]."""
        return self.gather_block(self.from_log(shifted))

    def final_sum(self, a: torch.Tensor) -> torch.Tensor:
        """log of sum_s alpha[s] * final[s], per utterance [B]."""
        return self.utt_log_sum(self.mul(a, self.final()))

    def beta_init(self, log_zf: torch.Tensor) -> torch.Tensor:
        """beta at each utterance's last frame: the final weights over the final sum (log ``log_zf`` [B])."""
        return self.div(self.final(), self.per_state(self.from_log(log_zf).to(self.dtype)))

    def viable(self, lens: torch.Tensor, t: int) -> torch.Tensor | None:
        """Mask of states that can still reach a final state in the ``lens - 1 - t`` frames left after
        frame t (None: every state can; then nothing is computed)."""
        return None if self.dist is None else self.dist <= self.per_state(lens - 1 - t)

    def state_bytes(self) -> int:
        """Memory of one state vector."""
        return self.state_numel() * torch.finfo(self.dtype).bits // 8


class SharedLayout(Layout):
    """All utterances on one graph, probability space: state vectors are [B, S] (the denominator)."""

    log_space = False
    zero = 0.0

    def __init__(self, g: CompiledGraph, batch: int, num_labels: int) -> None:
        super().__init__(batch, num_labels, g.dtype, g.arc_shift, g.final_shift, g.dist)
        self.g = g

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    def div(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / b

    def from_log(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)

    def log_norm(self, c: torch.Tensor) -> torch.Tensor:
        return torch.log(c)

    def prob(self, v: torch.Tensor) -> torch.Tensor:
        return v

    def init(self) -> torch.Tensor:
        return self.g.init.expand(self.batch, -1)

    def final(self) -> torch.Tensor:
        return self.g.final[None]

    def final_start(self) -> torch.Tensor:
        return torch.full((self.batch,), self.g.final_start, dtype=torch.float64, device=self.g.device)

    def state_numel(self) -> int:
        return self.batch * self.g.num_states

    def per_state(self, v: torch.Tensor) -> torch.Tensor:
        return v[:, None]

    def gather(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.index_select(1, self.g.label)

    def gather_block(self, e: torch.Tensor) -> torch.Tensor:
        # gather with an expanded index: index_select along the last dim is ~10x slower on CPU
        return torch.gather(e, 2, self.g.label.expand(e.shape[0], e.shape[1], -1)).transpose(0, 1)

    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        return self.g.fwd(a)

    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        return self.g.bwd(b)

    def utt_norm(self, a: torch.Tensor) -> torch.Tensor:
        return a.sum(1)

    def utt_log_sum(self, v: torch.Tensor) -> torch.Tensor:
        return torch.log(v.sum(1))

    def to_labels(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.batch, self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(1, self.g.label, gam)

    def to_labels_block(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*gam.shape[:2], self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(2, self.g.label, gam)


def _seg_lse(values: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Segment logsumexp (``-inf`` for empty segments), float64."""
    mx = torch.full((n,), NEG_INF, dtype=values.dtype, device=values.device)
    mx = mx.scatter_reduce(0, index, values, reduce="amax", include_self=True)
    safe = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    s = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, index, torch.exp(values - safe[index]))
    return torch.log(s) + safe


class FlatLayout(Layout):
    """Per-utterance graphs (the numerators) stacked block-diagonally, **log space**, float64: state
    vectors are [S_total].

    Log space because a numerator constrains the future: a prefix that is far behind at frame t can
    still own the posterior later, and its alpha may be more than 700 nats below the best prefix,
    which probability space would flush to zero (measured on peaky 3000-frame inputs). Numerator graphs
    are small, so the segment-logsumexp per frame is cheap.
    """

    log_space = True
    zero = NEG_INF

    def __init__(
        self,
        label: torch.Tensor,
        utt: torch.Tensor,
        init_log: torch.Tensor,
        final_log: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        logp: torch.Tensor,
        final_start_log: torch.Tensor,
        dist: torch.Tensor,
        batch: int,
        num_labels: int,
        arc_shift: float,
        final_shift: float,
    ) -> None:
        """Per state: ``label``, utterance ``utt``, log initial/final weights; per transition ``src``,
        ``dst``, log weight ``logp``; per utterance the log score of an empty utterance."""
        super().__init__(batch, num_labels, torch.float64, arc_shift, final_shift, dist)
        self.label, self.utt, self.init_log, self.final_log = label, utt, init_log, final_log
        self.src, self.dst, self.logp = src, dst, logp
        self.final_start_log = final_start_log
        self.flat = utt * num_labels + label
        self.num_states = int(label.numel())

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def div(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    def from_log(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def log_norm(self, c: torch.Tensor) -> torch.Tensor:
        return c

    def prob(self, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(v)

    def init(self) -> torch.Tensor:
        return self.init_log

    def final(self) -> torch.Tensor:
        return self.final_log

    def final_start(self) -> torch.Tensor:
        return self.final_start_log

    def state_numel(self) -> int:
        return self.num_states

    def per_state(self, v: torch.Tensor) -> torch.Tensor:
        return v[self.utt]

    def gather(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.reshape(-1)[self.flat]

    def gather_block(self, e: torch.Tensor) -> torch.Tensor:
        k = e.shape[1]
        return e.transpose(0, 1).reshape(k, -1)[:, self.flat]

    def fwd(self, a: torch.Tensor) -> torch.Tensor:
        return _seg_lse(a[self.src] + self.logp, self.dst, self.num_states)

    def bwd(self, b: torch.Tensor) -> torch.Tensor:
        return _seg_lse(b[self.dst] + self.logp, self.src, self.num_states)

    def utt_norm(self, a: torch.Tensor) -> torch.Tensor:
        c = torch.full((self.batch,), NEG_INF, dtype=a.dtype, device=a.device)
        return c.scatter_reduce(0, self.utt, a, reduce="amax", include_self=True)

    def utt_log_sum(self, v: torch.Tensor) -> torch.Tensor:
        return _seg_lse(v, self.utt, self.batch)

    def to_labels(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(self.batch * self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(0, self.flat, gam).view(self.batch, self.num_labels)

    def to_labels_block(self, gam: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(gam.shape[0], self.batch * self.num_labels, dtype=gam.dtype, device=gam.device)
        return out.index_add_(1, self.flat, gam).view(-1, self.batch, self.num_labels)

"""Pure-torch k-nearest-neighbour graphs and the torch-geometric GCN glue used by MMRS.

``torch_geometric.nn.knn_graph`` needs the compiled ``pyg-lib``, which has no PyPI distribution (see
``../shared/reference/tooling.md`` §6), so :func:`knn_edge_index` computes the same graph with plain
torch: for every node, its ``k`` nearest *other* nodes, as an ``edge_index`` in PyG's default
``flow="source_to_target"`` layout (row 0 = the neighbour, the message source; row 1 = the node that
receives the message). It is a drop-in for ``knn_graph(x, k, loop=False, cosine=...)``.

``torch_geometric`` itself is imported lazily by :func:`gcn_conv`: importing it costs ~1.5 s (it pulls in
``torch._dynamo``) and every pipeline stage imports all registered models, so only building a model that
has a GCN pays for it.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

METRICS = ("cosine", "euclidean")


@torch.no_grad()
def knn_edge_index(x: Tensor, k: int, metric: str = "cosine", chunk: int = 2048) -> Tensor:
    """Directed k-NN graph of the rows of ``x``, self excluded.

    Args:
        x: ``(N, d)`` node features (any float dtype; not differentiated: the graph is discrete).
        k: neighbours per node. When ``N - 1 < k`` every node takes all ``N - 1`` others; ``N = 1``
            gives no edges.
        metric: ``"cosine"`` (largest cosine similarity; zero vectors have similarity 0 to everything)
            or ``"euclidean"`` (smallest L2 distance).
        chunk: rows handled at a time, so memory is ``chunk x N`` rather than ``N x N``.

    Returns:
        ``(2, N * min(k, N - 1))`` int64 ``edge_index``: ``edge_index[1]`` is ``0, 0, .., 1, 1, ..``
        (``min(k, N - 1)`` times each node), ``edge_index[0]`` the neighbours of that node, nearest
        first. Ties are broken towards the lower node index, so the graph is a deterministic function
        of ``x``.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (N, d), got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n = x.shape[0]
    k_eff = min(k, n - 1)
    if k_eff <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    x = x.detach().float()
    if metric == "cosine":
        x = nn.functional.normalize(x, dim=1)
    else:
        sq = x.pow(2).sum(1)
    rows = []
    for start in range(0, n, chunk):
        xs = x[start : start + chunk]
        if metric == "cosine":
            score = -(xs @ x.T)  # smaller = nearer
        else:
            # squared distances; clamping guards the tiny negatives of the expanded form
            score = (sq[start : start + chunk, None] - 2 * xs @ x.T + sq[None, :]).clamp_min_(0)
        local = torch.arange(xs.shape[0], device=x.device)
        score[local, local + start] = float("inf")  # no self loops
        rows.append(_k_smallest(score, k_eff))
    source = torch.cat(rows).reshape(-1)
    target = torch.arange(n, device=x.device).repeat_interleave(k_eff)
    return torch.stack([source, target])


def _k_smallest(score: Tensor, k: int) -> Tensor:
    """Column indices of the ``k`` smallest entries of each row, ascending, ties to the lower index.

    ``topk`` is ~30x faster than a full stable sort at 1024 x 1024, but its order among equal values is
    unspecified, so: take ``topk``, re-sort those ``k`` by (score, index), and redo with a stable full
    sort only the rows where a tie straddles the k-th place (rare: duplicated samples).
    """
    top = score.topk(k, dim=1, largest=False)
    idx = top.indices.sort(dim=1).values  # ascending index, then a stable sort by score
    vals = score.gather(1, idx)
    idx = idx.gather(1, vals.sort(dim=1, stable=True).indices)
    kth = top.values[:, -1:]
    tied = (score <= kth).sum(1) > k
    if tied.any():
        idx[tied] = torch.sort(score[tied], dim=1, stable=True).indices[:, :k]
    return idx


def gcn_conv(in_channels: int, out_channels: int) -> nn.Module:
    """``torch_geometric.nn.GCNConv`` with self-loops and the symmetric normalisation
    ``D^-1/2 (A + I) D^-1/2`` (its defaults), imported on first use."""
    with warnings.catch_warnings():
        # torch_geometric 2.8 calls torch.jit.script at import time, which torch >= 2.10 deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn import GCNConv
    return GCNConv(in_channels, out_channels, improved=False, add_self_loops=True, normalize=True)

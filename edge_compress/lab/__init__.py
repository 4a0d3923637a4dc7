"""The device lab on Ray: one nightly suite across many lab hosts and the devices they reach.

- :mod:`edge_compress.lab.resources`: what a lab node advertises (``target:<name>: 1`` per device
  it reaches, ``cap:<capability>`` for what it can do) and how to read it back.
- :mod:`edge_compress.lab.node`: ``edge-compress lab head`` / ``lab join`` (a ``ray start``
  with those resources and the node's own inventory).
- :mod:`edge_compress.lab.tasks`: the functions Ray runs on lab nodes (measure a cell, compile an
  artifact, describe the node's targets); artifacts reach a node through the object store and
  are kept in a node-local cache keyed by their content hash.
- :mod:`edge_compress.lab.executor`: :class:`~edge_compress.lab.executor.RayExecutor`, the
  nightly cell executor that runs each cell as a Ray task requesting its target's resource.
- :mod:`edge_compress.lab.cluster`: connecting to the cluster and ``edge-compress lab status``.

Nothing here imports Ray at module level: ``import edge_compress`` stays cheap, and Ray (the
``lab`` extra) is needed only by the commands that use the cluster.
"""

from __future__ import annotations

NAMESPACE = "edge-compress"
INSTALL_HINT = "the device lab needs Ray: pip install 'edge-compress[lab]'"


def require_ray() -> object:
    """``import ray``, or a one-line UserError naming the extra to install."""
    from edge_compress.errors import UserError

    try:
        import ray
    except ImportError:
        raise UserError(f"{INSTALL_HINT}.") from None
    return ray

"""The OpenMP thread budget of scikit-learn's k-means, silhouette and t-SNE.

Their OpenMP loops busy-wait for their threads, so on cores shared with other work (CI, a busy
workstation) each thread beyond the free cores multiplies the run time. Measured on a 2-core machine
under load: k-means (10k x 128, 10 inits) 21.7 s on 2 threads vs 3.6 s on 1; t-SNE of 1000 points
63 s vs 7 s. Half the cores keeps most of a large machine's speed and avoids the worst of a shared one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from hybridssl.data.streaming import usable_cpus


def sklearn_threads() -> AbstractContextManager:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, usable_cpus() // 2))  # a container's or a SLURM task's CPUs, not the host's

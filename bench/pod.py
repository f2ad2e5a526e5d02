"""A pod's processes as the container runs them: TorchServe's java and its Python workers, their memory and CPU.

The Python launcher that `torchserve` keeps above java is left out: the container exec's java in its place.
"""

import threading
import time

import psutil

from bench.torchserve import TorchServe


def server_processes(server: TorchServe) -> tuple[psutil.Process, list[psutil.Process]]:
    """java (the launcher's child) and its Python workers."""
    (java,) = psutil.Process(server.process.pid).children()
    return java, java.children()


def memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) in bytes; a process that just exited counts as zero."""
    try:
        info = process.memory_full_info()
    except psutil.NoSuchProcess:
        return 0, 0
    return info.rss, info.pss


def cpu_seconds(server: TorchServe) -> tuple[float, float]:
    """CPU time (user + system) used so far by java and by all workers together."""
    java, workers = server_processes(server)
    used = [sum(p.cpu_times()[:2]) for p in (java, *workers)]
    return used[0], sum(used[1:])


class Sampler:
    """Samples java's and the workers' memory every `interval` seconds in a thread and keeps the peaks.

    PSS counts the pages the workers share (torch's libraries) once, as the pod's memory cgroup does.
    """

    def __init__(self, server: TorchServe, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.peak = {"java_rss": 0, "workers_rss": 0, "total_rss": 0, "total_pss": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            java, workers = server_processes(self.server)
        except (psutil.NoSuchProcess, ValueError):  # java is gone: nothing left to measure
            return
        java_rss, java_pss = memory(java)
        worker_memory = [memory(worker) for worker in workers]
        now = {
            "java_rss": java_rss,
            "workers_rss": sum(rss for rss, _ in worker_memory),
            "total_rss": java_rss + sum(rss for rss, _ in worker_memory),
            "total_pss": java_pss + sum(pss for _, pss in worker_memory),
        }
        self.peak = {key: max(self.peak[key], value) for key, value in now.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

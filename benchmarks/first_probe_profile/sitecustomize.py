"""Profile the first probe suite of a cockpit training process (``probe_keys.py --profile``).

Python imports ``sitecustomize`` at start-up when its folder is on ``PYTHONPATH``: the bench
puts this folder there for the trainer only, with ``LEV_FIRST_PROBE_PROFILE`` naming the file
the profile goes to. The first ``Probes._suite`` runs under cProfile (wall clock), its wall and
CPU seconds beside it (``LEV_FIRST_PROBE_CPROFILE=0``: those alone, without cProfile's
overhead); CPU seconds far below wall mean waiting (disk, GPU, another thread). The Triton
kernels the process compiles (or loads from the disk cache, ``benchmarks/triton_compiles.py``)
are listed with their specialisation, each marked before or inside that probe: the ones inside
are what the decode warm-up (``engine.chat.warm``) did not foresee.
"""

import os
import sys

_OUT = os.environ.get("LEV_FIRST_PROBE_PROFILE")
_CPROFILE = os.environ.get("LEV_FIRST_PROBE_CPROFILE", "1") != "0"  # 0: wall and kernels only (no overhead)


def _install() -> None:
    import cProfile
    import io
    import pstats
    import time

    from engine.evaluate import probes

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from triton_compiles import TritonCompiles

    inner = probes.Probes._suite
    done = []
    built = TritonCompiles().__enter__()  # for the process's life: every kernel, in order

    def suite(self, *a, **kw):
        if done:
            return inner(self, *a, **kw)
        done.append(1)
        before = len(built.specs)
        prof = cProfile.Profile() if _CPROFILE else None
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return prof.runcall(inner, self, *a, **kw) if prof else inner(self, *a, **kw)
        finally:
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            buf = io.StringIO()
            buf.write(f"first probe suite: wall {wall:.3f} s, this thread's CPU {cpu:.3f} s\n")
            if prof:
                stats = pstats.Stats(prof, stream=buf)
                stats.sort_stats("cumulative").print_stats(45)
                stats.sort_stats("tottime").print_stats(30)
            buf.write("Triton kernels built by the process (* inside the first probe suite):\n")
            for i, (name, spec) in enumerate(zip(built.names, built.specs, strict=True)):
                buf.write(f"{'*' if i >= before else ' '} {name}  {spec}\n")
            with open(_OUT, "w") as f:
                f.write(buf.getvalue())

    probes.Probes._suite = suite


if _OUT:
    try:
        _install()
    except Exception as e:  # the bench reads no profile; the run itself goes on
        print(f"first-probe profile not installed: {type(e).__name__}: {e}")

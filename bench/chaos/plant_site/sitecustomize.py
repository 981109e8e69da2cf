"""TEST-ONLY start-up hook of chaos replicas started with a planted bug (see bench/chaos/plants.py).

Only `bench.chaos.env.Environment(plant=...)` puts this directory on a process's path; with
`SFSYNC_TEST_PLANT` unset it does nothing.
"""

import os

if os.environ.get("SFSYNC_TEST_PLANT"):
    from bench.chaos.plants import install

    install()

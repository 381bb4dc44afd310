"""`python -m evit_ros.cli` is `evit-ros`."""

import runpy

runpy.run_module("evit_ros.cli.main", run_name="__main__", alter_sys=True)

"""`python -m evit_ros.demo` (the older name of `python -m evit_ros.cli.demo`, which `make demo` runs).

Runs the command-line module only when executed; importing this module imports nothing.
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("evit_ros.cli.demo", run_name="__main__", alter_sys=True)

"""The command line on top of the library: `evit-ros` and its subcommands, `evit_play`, the demo and tools.

Nothing in the library imports from here.
"""

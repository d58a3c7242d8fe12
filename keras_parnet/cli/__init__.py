"""The command lines: train, predict, evaluate, analyze, export, convert.

Each tool's module imports only argparse and `_common` at module level, so
`--help` and flag errors answer without loading TensorFlow.
"""

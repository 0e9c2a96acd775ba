"""The config layer: where barlab's YAML lives, its resolvers, command-line group checks, and
instantiation that names the knob of a failing node.

Nothing here builds a model or trains; every other layer may import it.
"""

"""Instantiate a config node so that a failure names the knob, in one line."""

from __future__ import annotations

import inspect
import re

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from barlab.errors import BarlabError, ConfigError

_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def knob_of(node: DictConfig, path: str, argument: str) -> str:
    """The knob a user sets for ``argument`` of the node at ``path``: the node's own key
    (``tokenizer.quantizer.channels``), or the knob it is interpolated from (``bits: ${tokenizer.bits}``
    -> ``tokenizer.bits``), followed through chains of plain interpolations."""
    knob = f"{path}.{argument}" if path else argument
    root = node._get_root()
    value = node._get_node(argument) if argument in node else None
    while value is not None and value._is_interpolation():
        match = _INTERPOLATION.match(str(value._value()))
        if match is None or match.group(1) == knob:
            break
        knob = match.group(1)
        value = _raw_node(root, knob)
    return knob


def _raw_node(root: DictConfig, key: str):
    """The unresolved node at the dotted ``key`` of ``root``, or None."""
    node = root
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node._get_node(part)
    return node


def arguments_of(node: DictConfig) -> set[str]:
    """The argument names the node's ``_target_`` takes, and the keys the node sets."""
    names = {str(key) for key in node.keys() if not str(key).startswith("_")}
    try:
        target = get_object(str(node._target_))
        names |= set(inspect.signature(target).parameters)
    except Exception:  # no target, or one without a signature: the keys alone
        pass
    return names


def renamed_for(err: ConfigError, node: DictConfig, path: str) -> ConfigError:
    """``err``, raised by a module built from ``node`` (at ``path``), renamed to the knob a user sets.

    A module names one of its own arguments (``bits``: renamed by :func:`knob_of`), or ``""`` for
    itself as a whole (renamed to ``path``). An error that names anything else is left as it is.
    """
    if err.knob == "":
        return err.renamed(path)
    if err.knob in arguments_of(node):
        return err.renamed(knob_of(node, path, err.knob))
    return err


def instantiate_checked(node: DictConfig, knob: str, **kwargs):
    """``hydra.utils.instantiate`` whose errors name the knob, in one line.

    ``knob`` is the node's path in the config (``tokenizer.quantizer``). Hydra wraps constructor
    errors in ``InstantiationException``:

    - a :class:`ConfigError` raised by a plain module names the module's own argument (``bits``); it is
      renamed to the knob a user sets (:func:`knob_of`: ``tokenizer.bits``), in its fix too;
    - any other :class:`BarlabError` is re-raised as it is;
    - anything else becomes a ConfigError naming ``knob``.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, BarlabError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise renamed_for(cause, node, knob) from None
        if isinstance(cause, BarlabError):
            raise cause from None
        raise ConfigError(knob, str(err).splitlines()[0]) from err

"""Instantiate a config node so that a failure names the knob, in one line."""

from __future__ import annotations

import inspect
import re
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from barlab.errors import BarlabError, ConfigError

_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")
_FULL_KEY = re.compile(r"^full_key: ([\w.]+)$", re.MULTILINE)


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


def renamed_by(err: ConfigError, names: Mapping[str, str]) -> ConfigError:
    """``err`` with its knob renamed by ``names`` (argument -> knob a user sets; ``""``: the module as a
    whole), and every ``<argument>=`` of ``names`` in its fix renamed too (``rope=false`` beside an
    error on ``heads``). An error whose knob ``names`` does not hold is returned as it is."""
    if err.knob not in names:
        return err
    out = err.renamed(names[err.knob])
    if out.fix:
        fix = out.fix
        for argument, knob in names.items():
            if argument and argument != err.knob:
                fix = re.sub(rf"(?<![\w.]){re.escape(argument)}(?=[=\[])", knob, fix)
        if fix != out.fix:
            out = ConfigError(out.knob, out.message, fix=fix)
    return out


def node_names(node: DictConfig, path: str, passed: Collection[str] = ()) -> dict[str, str]:
    """``argument -> knob`` for the module built from ``node`` (at ``path``): ``""`` is ``path``, each
    argument its :func:`knob_of`; the arguments in ``passed`` (given by the caller, not set in the
    config) are left out, for the caller to name (:func:`knob_names`)."""
    names = {argument: knob_of(node, path, argument) for argument in arguments_of(node) if argument not in passed}
    names[""] = path
    return names


def renamed_for(err: ConfigError, node: DictConfig, path: str, passed: Collection[str] = ()) -> ConfigError:
    """``err``, raised by a module built from ``node`` (at ``path``), renamed to the knob a user sets.

    A module names one of its own arguments (``bits``: renamed by :func:`knob_of`), or ``""`` for
    itself as a whole (renamed to ``path``). An error that names anything else, or an argument in
    ``passed`` (one the caller gave, see :func:`instantiate_checked`), is left as it is.
    """
    return renamed_by(err, node_names(node, path, passed))


def _raising_node(err: InstantiationException, node: DictConfig, path: str) -> tuple[DictConfig, str, bool]:
    """``(node, path, is the top node)`` of the module whose constructor failed: ``node`` itself, or the
    nested node Hydra instantiated first (``data.source`` inside ``data``), read from the innermost
    ``full_key`` of the error chain."""
    full_key, cause = None, err
    while cause is not None:
        if isinstance(cause, InstantiationException):
            match = _FULL_KEY.search(str(cause))
            full_key = match.group(1) if match else full_key
        cause = cause.__cause__
    own = node._get_full_key(None) or ""
    if full_key is None or full_key == own:
        return node, path, True
    relative = full_key[len(own) + 1:] if own and full_key.startswith(own + ".") else full_key
    child = _raw_node(node, relative)
    if not isinstance(child, DictConfig):
        return node, path, True
    return child, f"{path}.{relative}" if path else relative, False


@contextmanager
def knob_names(names: Mapping[str, str] | None = None, /, **more: str) -> Iterator[None]:
    """Rename a :class:`ConfigError` raised in the block that names one of the given arguments.

    For plain functions the wiring calls outside instantiation::

        with knob_names(p="generator.token_shuffle"):
            check_shuffle(grid, p)        # "p: must be ..." -> "generator.token_shuffle: must be ..."

    ``names`` maps an argument (``""``: the module as a whole) to the knob a user sets; keyword
    arguments add to it. The error's fix is renamed as by :func:`renamed_by`. Errors naming anything
    else (an already dotted knob, an argument not given) pass through unchanged.
    """
    names = {**(names or {}), **more}
    try:
        yield
    except ConfigError as err:
        if err.knob not in names:
            raise
        raise renamed_by(err, names) from None


def instantiate_checked(node: DictConfig, knob: str, **kwargs):
    """``hydra.utils.instantiate`` whose errors name the knob, in one line.

    ``knob`` is the node's path in the config (``tokenizer.quantizer``). Hydra wraps constructor
    errors in ``InstantiationException``:

    - a :class:`ConfigError` raised by a plain module names the module's own argument (``bits``); it is
      renamed to the knob a user sets (:func:`knob_of`: ``tokenizer.bits``), in its fix too; an error
      of a nested node Hydra builds first (``data.source``) is renamed against that node. The
      arguments given here in ``kwargs`` are not the config's: an error naming one is left as it is,
      for the caller to name with :func:`knob_names`;
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
            raising, path, top = _raising_node(err, node, knob)
            raise renamed_for(cause, raising, path, passed=kwargs if top else ()) from None
        if isinstance(cause, BarlabError):
            raise cause from None
        raise ConfigError(knob, str(err).splitlines()[0]) from err

"""Handlers declared where they are defined: ``@change(KEY, ...)`` on a method that reacts to
state keys, ``@controller("name")`` on a method the page calls (a button). ``bind(obj, server)``
registers every marked method of one object when it is made.

This is trame's ``@state.change`` / ``@ctrl.set`` for methods of objects built at run time (one
per pane, one per tab): the handler sits next to what it changes, and no list of handlers has to
be kept in step with the methods by hand. A key may be a callable of the object, for the
per-pane keys (:func:`pane`).
"""

from __future__ import annotations

from collections.abc import Callable

from volviz.app.state import pane_key

__all__ = ["bind", "change", "controller", "pane"]

_CHANGE, _CTRL = "_volviz_change", "_volviz_ctrl"


def change(*keys: str | Callable[[object], str]):
    """Run the method when any of ``keys`` changes (after ``state.flush()`` or a client update)."""

    def mark(fn):
        fn.__dict__.setdefault(_CHANGE, []).extend(keys)
        return fn

    return mark


def controller(name: str, *, add: bool = False):
    """Make the method ``ctrl.<name>`` (``add=True``: one more listener of a trame event such as
    ``on_client_exited``)."""

    def mark(fn):
        fn.__dict__.setdefault(_CTRL, []).append((name, add))
        return fn

    return mark


def pane(field: str) -> Callable[[object], str]:
    """The state key of ``field`` for the object's pane (``obj.index``): ``p0_layer``, ..."""
    return lambda obj: pane_key(obj.index, field)


def bind(obj, server) -> None:
    """Register the marked methods of ``obj`` with ``server``'s state and controller."""
    state, ctrl = server.state, server.controller
    seen: set[str] = set()
    for klass in type(obj).__mro__:  # a subclass's method wins over its base's
        for name, fn in list(vars(klass).items()):
            if name in seen:
                continue
            seen.add(name)
            keys, ctrls = getattr(fn, _CHANGE, None), getattr(fn, _CTRL, None)
            if not keys and not ctrls:
                continue
            method = getattr(obj, name)
            if keys:
                state.change(*[k(obj) if callable(k) else k for k in keys])(method)
            for cname, add in ctrls or ():
                (ctrl.add if add else ctrl.set)(cname)(method)
                if not add:  # also callable by its name (``trame.trigger("record")``: scripts, tests)
                    ctrl.trigger(cname)(method)

"""The one exception type for bad input, raised before anything is compiled."""

__all__ = ["InputError"]


class InputError(ValueError):
    """A field of a game, policy, scenario or file breaks a rule.

    The message names the field, the offending index (for arrays) and the rule, e.g.
    ``RoutingGame.demand[1, 3] = -2.0: must be finite and >= 0``.
    """

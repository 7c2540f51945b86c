"""The one error of the search: bad input, found before anything trains."""


class SearchError(ValueError):
    """A search that cannot run as asked (empty space, unknown layer, budgets no genome meets, a
    workdir holding another search); its message is one line naming the problem and the fix."""

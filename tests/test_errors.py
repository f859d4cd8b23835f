"""The one error hierarchy: every error raised on purpose has a code and a sentence."""

from __future__ import annotations

import pytest

from tidings import errors
from tidings.web.http import HttpError


@pytest.mark.parametrize("kind", [getattr(errors, name) for name in errors.__all__])
def test_every_server_error_carries_a_code_and_a_detail(kind: type[errors.TidingsError]) -> None:
    error = kind("what went wrong")
    assert isinstance(error, errors.TidingsError)
    assert error.code and error.detail == str(error) == "what went wrong"


def test_invalid_input_is_a_value_error_and_the_http_errors_are_in_the_hierarchy() -> None:
    assert issubclass(errors.InvalidChannel, ValueError) and issubclass(errors.InvalidCursor, ValueError)
    refused = HttpError(405, "method_not_allowed", "use GET")
    assert isinstance(refused, errors.TidingsError)
    assert (refused.status, refused.code, refused.detail) == (405, "method_not_allowed", "use GET")

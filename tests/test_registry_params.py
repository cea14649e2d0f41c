"""gence.registry's parameter checks: keyword names read from a builder's signature, unknown names refused."""
import pytest

from gence.registry import check_keywords, keyword_names


def builder(in_channels, num_classes, depth=20, *, width=16):
    return None


class Network:
    def __init__(self, in_channels, hidden=(8,)):
        pass


def passes_on(data_dir, n=10, **rest):
    return None


def test_keyword_names_from_functions_and_classes_less_skip():
    assert keyword_names(builder) == ("in_channels", "num_classes", "depth", "width")
    assert keyword_names(builder, skip=("in_channels", "num_classes")) == ("depth", "width")
    assert keyword_names(Network, skip=("in_channels",)) == ("hidden",)  # no "self"


def test_kwargs_accept_any_name_unless_they_are_forwarded():
    assert keyword_names(passes_on, skip=("data_dir",)) is None
    # forwarded: the builder's names, then the target's new ones (in_channels is skipped, depth not repeated)
    assert keyword_names(passes_on, skip=("data_dir", "in_channels"), forwards_to=(builder, Network)) == \
        ("n", "num_classes", "depth", "width", "hidden")


def test_check_keywords_names_what_the_parameter_and_the_choices():
    check_keywords("model 'x'", {"depth": 3}, ("depth", "width"))
    check_keywords("model 'x'", {"anything": 1}, None)
    with pytest.raises(ValueError, match=r"^model 'x': unknown parameter deep=3, wide=\[1\]; expected some of: "
                                         r"depth, width$"):
        check_keywords("model 'x'", {"deep": 3, "depth": 1, "wide": [1]}, ("depth", "width"))
    with pytest.raises(ValueError, match=r"^dataset 'd': unknown parameter n=1; it takes no parameters$"):
        check_keywords("dataset 'd'", {"n": 1}, ())

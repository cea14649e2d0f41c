import pytest

from gence.registry import Registry


def test_register_get_available_sorted_with_descriptions():
    reg = Registry("widget")

    @reg.register("b", "second", size=2)
    def make_b():
        return "B"

    @reg.register("a", "first")
    def make_a():
        return "A"

    assert make_b() == "B"  # the decorator returns the function unchanged
    assert reg.available() == {"a": "first", "b": "second"}
    assert list(reg.available()) == ["a", "b"]
    assert reg.get("b").builder() == "B" and reg.get("b").info == {"size": 2}
    assert "a" in reg and "c" not in reg and len(reg) == 2


def test_unknown_and_duplicate_names_are_clear_errors():
    reg = Registry("widget")
    reg.register("a", "first")(lambda: None)
    with pytest.raises(ValueError, match=r"unknown widget name='z'; expected one of: a"):
        reg.get("z")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "again")(lambda: None)

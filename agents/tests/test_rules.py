"""The rules of names, tags and version references, the same for the API, pages and admin."""

import pytest
from django.core.exceptions import ValidationError

from agents.models import AgentVersion, clean_tags, validate_name


@pytest.mark.parametrize("reference, number", [(3, 3), ("3", 3), ("v3", 3), ("V12", 12)])
def test_a_version_is_named_by_its_number_or_its_label(reference, number):
    assert AgentVersion.number_from_label(reference) == number


@pytest.mark.parametrize("reference", ["", "v", "latest", "3.0", "-1", "²", True, None])
def test_anything_else_names_no_version(reference):
    assert AgentVersion.number_from_label(reference) is None


def test_tags_are_lowercased_and_kept_once_in_order():
    assert clean_tags([" NLP", "demo", "nlp"]) == ["nlp", "demo"]


@pytest.mark.parametrize("tags", [["has space"], [""], [f"t{n}" for n in range(21)]])
def test_bad_or_too_many_tags_are_refused(tags):
    with pytest.raises(ValidationError):
        clean_tags(tags)


@pytest.mark.parametrize("name", ["", "Caps", "-dash-first", "a" * 65, "dot.ted"])
def test_a_bad_agent_name_is_refused(name):
    with pytest.raises(ValidationError):
        validate_name(name)
